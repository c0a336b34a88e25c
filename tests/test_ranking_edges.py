"""`rank_proxies` plumbing: which arguments reach the task, the sample, the cache and the result file.

A 3-configuration benchmark is built for real on the embedded demo; bigger ones copy its metadata and add
synthetic accuracies (ranking does not re-evaluate anything, so any top-1 in [0, 100] will do).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mixq.emq.ranking as ranking
from mixq.bench import MQBench
from mixq.cli import main
from mixq.errors import MixqError
from mixq.evoq.sensitivity import SensitivityTable
from mixq.proxies.cache import StatsCache
from mixq.proxies.rank import rank_metrics

KEEP = ("model", "layer_names", "layer_params", "checkpoint_sha256", "checkpoint_file")


def _real_bench(tmp_path: Path) -> Path:
    path = tmp_path / "real.sqlite"
    assert main(["bench", "build", str(path), "--n", "3", "--n-test", "10", "--samples", "8", "--no-progress"]) == 0
    return path


def _synthetic_bench(tmp_path: Path, n: int, meta: dict[str, Any] | None = None) -> Path:
    """A benchmark of ``n`` distinct configurations with accuracies from their bits (a known ranking)."""
    real = MQBench.open(_real_bench(tmp_path), readonly=True)
    m = {k: real.meta[k] for k in KEEP}
    m.update(meta or {})
    real.close()
    path = tmp_path / f"synthetic{n}.sqlite"
    bench = MQBench.create(path, m)
    rng = np.random.default_rng(123)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < n:
        bits = tuple(int(b) for b in rng.choice([2, 3, 4, 8], size=len(m["layer_names"])))
        if bits in seen:
            continue
        seen.add(bits)
        bench.add(bits, top1=float(rng.uniform(10, 90)))
    bench.close()
    return path


class _Spy:
    """Wrap a callable, record each call's keyword arguments, call through."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.calls = fn, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


def test_arguments_reach_task_bench_and_model(demo_only, tmp_path, monkeypatch):
    path = _synthetic_bench(tmp_path, 4)
    real_load = ranking.load_task
    loads: list[dict[str, Any]] = []

    def load_task(model: str, **kw: Any) -> Any:
        loads.append(dict(kw, model=model))
        # the roots are sentinels here: the demo is found without them
        return real_load(model, **dict(kw, data_root=None, model_root=None))

    opens = _Spy(MQBench.open)
    qms = _Spy(ranking.QuantModel)
    monkeypatch.setattr(ranking, "load_task", load_task)
    monkeypatch.setattr(ranking.MQBench, "open", opens)
    monkeypatch.setattr(ranking, "QuantModel", qms)
    r = ranking.rank_proxies(path, ["bparams"], data_root="DATA", model_root="MODELS")
    assert loads == [{"model": "resnet20-jpeg", "samples": 64, "seed": 0, "data_root": "DATA",
                      "model_root": "MODELS", "n_test": 10}]
    assert opens.calls == [((path,), {"readonly": True})]
    (args, kw), = qms.calls
    assert kw.keys() == {"calib"} and kw["calib"] is not None and kw["calib"].shape[0] == 64
    loads.clear()
    ranking.rank_proxies(path, ["bparams"], proxy_batch=1, seed=7)
    assert loads[0]["samples"] == 1 and loads[0]["seed"] == 7 and loads[0]["data_root"] is None
    assert r["model"] == "resnet20-jpeg"


def test_result_keys_sample_and_timings(demo_only, tmp_path):
    path = _synthetic_bench(tmp_path, 60)
    bench = MQBench.open(path, readonly=True)
    entries = bench.entries()
    bits = np.array([e.bits_tuple for e in entries])
    acc = np.array([e.top1 for e in entries])
    t0 = time.perf_counter()
    r = ranking.rank_proxies(path, ["bparams"], proxy_batch=8)
    wall = time.perf_counter() - t0
    assert list(r) == ["bench", "model", "entries", "sample", "results"]
    assert r["bench"] == str(path) and r["entries"] == 60 and r["sample"] == 50  # the default sample is 50
    (res,) = r["results"]
    assert list(res) == ["proxy", "stats_seconds", "score_seconds", "sample50", "all"]
    assert isinstance(res["score_seconds"], float) and 0.0 <= res["score_seconds"] <= wall
    # the same seeded draw of 50 of 60, without replacement, scored by hand (bparams = size in bits)
    params = np.array(bench.layer_params, dtype=float)
    scores = (bits * params).sum(axis=1)
    picked = np.random.default_rng(0).choice(60, size=50, replace=False)
    assert res["all"] == pytest.approx(rank_metrics(scores, acc))
    assert res["sample50"] == pytest.approx(rank_metrics(scores[picked], acc[picked]))
    other = ranking.rank_proxies(path, ["bparams"], proxy_batch=8, seed=3)["results"][0]["sample50"]
    picked3 = np.random.default_rng(3).choice(60, size=50, replace=False)
    assert other == pytest.approx(rank_metrics(scores[picked3], acc[picked3]))
    # a sample as large as the benchmark is a permutation of it (no repeats): the same metrics as "all"
    whole = ranking.rank_proxies(path, ["bparams"], proxy_batch=8, sample=60)["results"][0]
    assert whole["sample60"] == pytest.approx(whole["all"])
    bench.close()


def test_three_configurations_are_enough_two_are_not(demo_only, tmp_path):
    path = _synthetic_bench(tmp_path, 3)
    assert ranking.rank_proxies(path, ["bparams"], proxy_batch=8)["entries"] == 3
    two = tmp_path / "two.sqlite"
    real = MQBench.open(path, readonly=True)
    bench = MQBench.create(two, {k: real.meta[k] for k in KEEP})
    for e in real.entries()[:2]:
        bench.add(e.bits_tuple, e.top1)
    bench.close()
    with pytest.raises(MixqError) as exc:
        ranking.rank_proxies(two, ["bparams"])
    assert str(exc.value) == f"benchmark {str(two)!r} holds 2 configurations; ranking needs at least 3"


def test_other_layers_than_the_model(demo_only, tmp_path):
    real = MQBench.open(_real_bench(tmp_path), readonly=True)
    names = list(real.meta["layer_names"])
    real.close()
    (tmp_path / "real.sqlite").unlink()
    path = _synthetic_bench(tmp_path, 3, {"layer_names": names[::-1]})
    with pytest.raises(MixqError) as exc:
        ranking.rank_proxies(path, ["bparams"], proxy_batch=8)
    assert str(exc.value) == f"benchmark {str(path)!r} has other layers than model 'resnet20-jpeg'"


def test_stats_cache_is_keyed_by_the_benchmark_checkpoint(demo_only, tmp_path):
    path = _synthetic_bench(tmp_path, 4)
    bench = MQBench.open(path, readonly=True)
    sha, names = bench.meta["checkpoint_sha256"], list(bench.layer_names)
    bench.close()
    cache = tmp_path / "c.npz"
    ranking.rank_proxies(path, ["snip"], proxy_batch=8, stats_cache=cache)
    assert StatsCache(cache, sha, names).get("snip", 8, 0) is not None
    assert StatsCache(cache, "None", names).get("snip", 8, 0) is None


def test_ray_statistics_equal_serial_and_fill_the_cache_once(demo_only, tmp_path, ray_executor):
    path = _synthetic_bench(tmp_path, 8)
    proxies = ["hawq-v2", "snip", "qe"]  # seeded Hutchinson vectors, labels, seeded noise input
    serial = ranking.rank_proxies(path, proxies, proxy_batch=8)["results"]
    cache = tmp_path / "ray.npz"
    ray = ranking.rank_proxies(path, proxies, proxy_batch=8, stats_cache=cache, executor=ray_executor)["results"]
    assert [r["proxy"] for r in ray] == proxies
    for a, b in zip(serial, ray, strict=True):
        # an actor runs torch on 1 thread, this process on 2: sums of the statistics round in another order
        # (relative differences ~1e-8), which leaves every rank, and so Kendall and Spearman, unchanged
        for key in ("all", "sample8"):
            assert a[key]["kendall"] == b[key]["kendall"] and a[key]["spearman"] == b[key]["spearman"]
            assert a[key] == pytest.approx(b[key], rel=1e-6, nan_ok=True)
    bench = MQBench.open(path, readonly=True)
    stored = StatsCache(cache, bench.meta["checkpoint_sha256"], list(bench.layer_names))
    bench.close()
    assert all(stored.get(p, 8, 0) is not None for p in proxies)
    again = ranking.rank_proxies(path, proxies, proxy_batch=8, stats_cache=cache, executor=ray_executor)["results"]
    assert [r["stats_seconds"] for r in again] == [r["stats_seconds"] for r in ray]  # read back, not recomputed


def test_sensitivity_table_default_source_in_messages():
    with pytest.raises(MixqError) as exc:
        SensitivityTable.from_dict({"format": "something else"})
    assert str(exc.value).startswith("sensitivity table ")
