"""MQ benchmark: sampling, the SQLite store, the resumable builder and the bench CLI (all tiny, fast)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3

import numpy as np
import pytest
import torch
from torch import nn

import mixq.bench.build as build_mod
from mixq.bench import FORMAT, SCHEMA_VERSION, MQBench, average_bits, build_benchmark, sample_configs
from mixq.bits import BitConfig
from mixq.cli.bench import add_commands as add_bench_commands
from mixq.data import ImageSet
from mixq.errors import MixqError
from mixq.evaluation.task import Task
from mixq.executor import Executor, SerialExecutor
from mixq.quant.model import QuantModel

NAMES = [f"l{i}" for i in range(10)]
PARAMS = [27, 500, 800, 1200, 64, 2000, 300, 4000, 900, 100]


# -- sampling ----------------------------------------------------------------------------------------
def test_emq_sampling_deterministic_unique_pinned():
    a = sample_configs(NAMES, PARAMS, 50, seed=3)
    assert a == sample_configs(NAMES, PARAMS, 50, seed=3)
    assert a != sample_configs(NAMES, PARAMS, 50, seed=4)
    assert len(a) == 50 and len(set(a)) == 50
    for bits in a:
        assert len(bits) == len(NAMES)
        assert bits[0] == 8 and bits[-1] == 8
        assert set(bits[1:-1]) <= {2, 3, 4}
    # all free choices appear
    assert {b for bits in a for b in bits[1:-1]} == {2, 3, 4}


def test_emq_sampling_small_space_enumerates_and_caps():
    names, params = ["a", "b", "c", "d"], [10, 20, 30, 40]  # 2 free layers -> 9 configs
    all9 = sample_configs(names, params, 9, seed=0)
    assert len(set(all9)) == 9
    with pytest.raises(MixqError, match="only 9 exist"):
        sample_configs(names, params, 10, seed=0)


def test_sampling_bad_inputs():
    with pytest.raises(MixqError, match="sampling mode"):
        sample_configs(NAMES, PARAMS, 5, mode="grid")
    with pytest.raises(MixqError, match="bit choices"):
        sample_configs(NAMES, PARAMS, 5, choices=(1, 3))
    with pytest.raises(MixqError, match="parameter counts"):
        sample_configs(NAMES, PARAMS[:-1], 5)
    with pytest.raises(MixqError, match="positive integer"):
        sample_configs(NAMES, PARAMS, 0)


def test_size_spread_even_over_size():
    n = 20
    cfgs = sample_configs(NAMES, PARAMS, n, seed=1, mode="size-spread")
    assert cfgs == sample_configs(NAMES, PARAMS, n, seed=1, mode="size-spread")
    assert len(set(cfgs)) == n
    assert all(c[0] == 8 and c[-1] == 8 and set(c[1:-1]) <= {2, 3, 4} for c in cfgs)
    lo = average_bits([8] + [2] * 8 + [8], PARAMS)
    hi = average_bits([8] + [4] * 8 + [8], PARAMS)
    avgs = np.array([average_bits(c, PARAMS) for c in cfgs])
    bins = np.clip(((avgs - lo) / (hi - lo) * n).astype(int), 0, n - 1)
    # nearly one per bin (a bin narrower than the smallest one-layer step may borrow a neighbour)
    assert len(set(bins.tolist())) >= n - 3
    emq = np.array([average_bits(c, PARAMS) for c in sample_configs(NAMES, PARAMS, n, seed=1)])
    assert np.ptp(avgs) > np.ptp(emq)  # wider than uniform per-layer draws


# -- store -------------------------------------------------------------------------------------------
def _meta(model="tiny", names=NAMES, params=PARAMS):
    return {"model": model, "layer_names": list(names), "layer_params": list(params), "quantizer": {"act_bits": 8},
            "sampling": {"mode": "emq"}}


def _filled(tmp_path, n=12):
    bench = MQBench.create(tmp_path / "b.mqbench", _meta())
    cfgs = sample_configs(NAMES, PARAMS, n, seed=0)
    for i, c in enumerate(cfgs):
        bench.add(c, top1=50.0 + i, seconds=0.1)
    return bench, cfgs


def test_store_round_trip_and_query(tmp_path):
    bench, cfgs = _filled(tmp_path)
    bench.close()
    with MQBench.open(tmp_path / "b.mqbench", expect_model="tiny") as b:
        assert len(b) == 12
        meta = b.meta
        assert meta["format"] == FORMAT and meta["schema_version"] == SCHEMA_VERSION == 1
        e = b.get(3)
        assert e.idx == 3 and e.bits_tuple == cfgs[3] and list(e.bits) == NAMES and e.top1 == 53.0
        assert e.avg_bits == pytest.approx(average_bits(cfgs[3], PARAMS))
        assert e.size_mb == pytest.approx(sum(p * b for p, b in zip(PARAMS, cfgs[3])) / 8 / 2**20)
        assert b.query(BitConfig(e.bits)) == e
        assert b.query(dict(e.bits)) == e
        assert b.query(list(cfgs[3])) == e
        assert b.index_of(e.bits) == 3
        assert [x.idx for x in b.entries()] == list(range(12))
        other = next(c for c in sample_configs(NAMES, PARAMS, 40, seed=9) if c not in cfgs)
        assert b.index_of(other) is None
        with pytest.raises(MixqError, match="not in benchmark"):
            b.query(other)
        with pytest.raises(MixqError, match="no entry 12"):
            b.get(12)
        with pytest.raises(MixqError, match="already in benchmark"):
            b.add(cfgs[0], 1.0)
        assert b.pending(cfgs + [other]) == [other]


def test_config_for_another_model(tmp_path):
    bench, _ = _filled(tmp_path, n=2)
    with bench:
        with pytest.raises(MixqError, match="another model"):
            bench.query({"conv1": 8, "fc": 4})
        with pytest.raises(MixqError, match="needs one per layer"):
            bench.query([8, 4, 8])
        with pytest.raises(MixqError, match="lacks layer"):
            bench.query({n: 4 for n in NAMES[:-1]})
    with pytest.raises(MixqError, match="is of model 'tiny', not 'resnet20-jpeg'"):
        MQBench.open(tmp_path / "b.mqbench", expect_model="resnet20-jpeg")


def test_sample_and_split_deterministic_disjoint(tmp_path):
    bench, _ = _filled(tmp_path, n=20)
    with bench:
        s1, s2 = bench.sample(5, seed=1), bench.sample(5, seed=1)
        assert s1 == s2 and len({e.idx for e in s1}) == 5
        assert [e.idx for e in bench.sample(5, seed=2)] != [e.idx for e in s1]
        tr, ho = bench.split(0.75, seed=0)
        assert (tr, ho) == bench.split(0.75, seed=0)
        ti, hi = {e.idx for e in tr}, {e.idx for e in ho}
        assert len(tr) == 15 and len(ho) == 5 and not ti & hi and ti | hi == set(range(20))
        with pytest.raises(MixqError, match="holds 20"):
            bench.sample(21)
        with pytest.raises(MixqError, match="strictly between 0 and 1"):
            bench.split(1.0)


def test_jsonl_export(tmp_path):
    bench, cfgs = _filled(tmp_path, n=4)
    with bench:
        assert bench.to_jsonl(tmp_path / "b.jsonl") == 4
    lines = (tmp_path / "b.jsonl").read_text().splitlines()
    assert len(lines) == 4
    objs = [json.loads(line) for line in lines]
    assert [o["index"] for o in objs] == [0, 1, 2, 3]
    assert set(objs[0]) == {"index", "bits", "top1", "avg_bits", "size_mb"}
    assert list(objs[2]["bits"]) == NAMES and tuple(objs[2]["bits"].values()) == cfgs[2]
    assert objs[2]["top1"] == 52.0


def test_corrupt_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.mqbench"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MixqError, match="is not a mixq benchmark \\(corrupt or not SQLite"):
        MQBench.open(junk)
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE people (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(MixqError, match="not a mixq benchmark: it is an SQLite database"):
        MQBench.open(foreign)
    # right tables, wrong format / version
    bench, _ = _filled(tmp_path, n=1)
    bench.close()
    con = sqlite3.connect(tmp_path / "b.mqbench")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(MixqError, match="schema version 2"):
        MQBench.open(tmp_path / "b.mqbench")
    with pytest.raises(MixqError, match="does not exist"):
        MQBench.open(tmp_path / "missing.mqbench")
    with pytest.raises(MixqError, match="already exists"):
        MQBench.create(foreign, _meta())


# -- builder -----------------------------------------------------------------------------------------
def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10),
    ).eval()


def _tiny_task(model: str, samples: int = 50, seed: int = 0, n_test: int | None = None, **_: object) -> Task:
    g = torch.Generator().manual_seed(seed)
    test = ImageSet(torch.randint(0, 256, (40, 3, 8, 8), generator=g, dtype=torch.uint8),
                    torch.randint(0, 10, (40,), generator=g), "cifar10", "test")
    calib = ImageSet(torch.randint(0, 256, (samples, 3, 8, 8), generator=g, dtype=torch.uint8),
                     torch.randint(0, 10, (samples,), generator=g), "cifar10", "train")
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    x = (calib.images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return Task(name=model, model=_tiny_model(), dataset="cifar10", mean=mean, std=std, calib=x,
                calib_set=calib, test=test, seed=seed)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(build_mod, "load_task", _tiny_task)
    monkeypatch.setattr(build_mod, "checkpoint_sha256", lambda *a, **k: ("ab" * 32, "tiny.pt"))
    calls: list[tuple[int, ...]] = []
    real = build_mod._evaluate

    def counting(qm, task, bits, batch_size):
        calls.append(tuple(bits))
        return real(qm, task, bits, batch_size)

    monkeypatch.setattr(build_mod, "_evaluate", counting)
    return calls


def test_build_records_meta_and_labels(tmp_path, tiny):
    with build_benchmark(tmp_path / "t.mqbench", "tiny", n=6, samples=8, progress=False) as bench:
        assert len(bench) == 6 and len(tiny) == 6
        meta = bench.meta
        assert meta["model"] == "tiny" and meta["checkpoint_sha256"] == "ab" * 32
        assert meta["layer_names"] == ["0", "3", "5", "7", "11"]
        assert meta["quantizer"]["ptq"] == "none (no reconstruction)"
        assert meta["data"] == {"dataset": "cifar10", "split": "test", "n_test": None, "n_images": 40}
        assert meta["calibration"] == {"samples": 8, "seed": 0, "split": "train"}
        assert meta["sampling"] == {"mode": "emq", "choices": [2, 3, 4], "pinned_bits": 8, "seed": 0, "n": 6}
        assert "torch" in meta["versions"] and len(meta["sessions"]) == 1
        entries = bench.entries()
        assert [e.bits_tuple for e in entries] == sample_configs(meta["layer_names"], meta["layer_params"], 6)
        assert all(e.bits_tuple[0] == 8 for e in entries)
    # each label is the top-1 of that configuration, recomputed by hand (within one of the 40 images:
    # the builder runs channels-last, so float sums go in another order)
    task = _tiny_task("tiny", samples=8)
    qm = QuantModel(task.model, calib=task.calib)
    for e in entries:
        qm.set_bits_tuple(e.bits_tuple)
        with torch.no_grad():
            right = sum(int((qm(x).argmax(1) == y).sum()) for x, y in task.test_batches(40))
        assert abs(e.top1 - 100 * right / 40) <= 100 / 40 + 1e-9, e.bits_tuple
    # labels are deterministic: a fresh build gives the same numbers
    with build_benchmark(tmp_path / "u.mqbench", "tiny", n=6, samples=8, progress=False) as again:
        assert [e.top1 for e in again.entries()] == [e.top1 for e in entries]


def test_build_resumes_after_interrupt(tmp_path, tiny, monkeypatch):
    counting = build_mod._evaluate
    k = 3

    def dying(qm, task, bits, batch_size):
        if len(tiny) == k:
            raise KeyboardInterrupt
        return counting(qm, task, bits, batch_size)

    monkeypatch.setattr(build_mod, "_evaluate", dying)
    path = tmp_path / "r.mqbench"
    with pytest.raises(KeyboardInterrupt):
        build_benchmark(path, "tiny", n=8, samples=8, progress=False)
    first = list(tiny)
    with MQBench.open(path) as partial:
        assert len(partial) == k
    monkeypatch.setattr(build_mod, "_evaluate", counting)
    with build_benchmark(path, "tiny", n=8, samples=8, progress=False) as bench:
        stored = [e.bits_tuple for e in bench.entries()]
        assert len(stored) == 8 == len(set(stored))
        assert stored == sample_configs(bench.layer_names, bench.layer_params, 8)
        assert len(tiny) == 8 and not set(first) & set(tiny[k:])  # first k not evaluated again
        assert len(bench.meta["sessions"]) == 2
    # a complete benchmark reruns without evaluating anything
    with build_benchmark(path, "tiny", n=8, samples=8, progress=False):
        assert len(tiny) == 8


def test_build_refuses_other_settings_and_foreign_files(tmp_path, tiny):
    path = tmp_path / "s.mqbench"
    build_benchmark(path, "tiny", n=2, samples=8, progress=False).close()
    with pytest.raises(MixqError, match="other settings.*pick another file"):
        build_benchmark(path, "tiny", n=3, samples=8, progress=False)
    with pytest.raises(MixqError, match="other settings"):
        build_benchmark(path, "tiny", n=2, samples=8, mode="size-spread", progress=False)
    junk = tmp_path / "junk.mqbench"
    junk.write_bytes(b"\x00not sqlite" * 100)
    with pytest.raises(MixqError, match="not a mixq benchmark"):
        build_benchmark(junk, "tiny", n=2, samples=8, progress=False)
    with pytest.raises(MixqError, match="sampling mode"):
        build_benchmark(tmp_path / "x.mqbench", "tiny", n=2, mode="bogus", progress=False)
    assert not (tmp_path / "x.mqbench").exists()


# -- CLI ---------------------------------------------------------------------------------------------
def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mixq")
    add_bench_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_build_info_export_query(tmp_path, tiny, capsys):
    path = str(tmp_path / "c.mqbench")
    assert _run(["bench", "build", path, "--model", "tiny", "-n", "3", "--samples", "8", "--no-progress"]) == 0
    assert "3 configurations of tiny" in capsys.readouterr().out
    assert _run(["bench", "info", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["summary"]["entries"] == 3 and info["meta"]["format"] == FORMAT
    assert _run(["bench", "export", path]) == 0
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == 3
    capsys.readouterr()
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(json.loads(lines[1])["bits"]))
    assert _run(["bench", "query", path, "--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)["index"] == 1
    cfg.write_text(json.dumps({"conv1": 8, "fc": 8}))
    with pytest.raises(MixqError, match="another model"):
        _run(["bench", "query", path, "--config", str(cfg)])


def test_cli_build_passes_the_executor_options_and_records_them(tmp_path, tiny, monkeypatch, capsys):
    import mixq.cli.common as common

    asked: list[tuple] = []

    def fake_make_executor(name, workers=None, address=None, device="cpu"):
        asked.append((name, workers, address, device))
        ex = SerialExecutor()
        ex.name, ex.workers = "fake-" + name, workers  # what the file records comes from the executor used
        return ex

    monkeypatch.setattr(common, "make_executor", fake_make_executor)
    path = str(tmp_path / "e.mqbench")
    argv = ["bench", "build", path, "--model", "tiny", "-n", "2", "--samples", "8", "--no-progress",
            "--executor", "ray", "--workers", "3", "--address", "auto", "--device", "cpu"]
    assert _run(argv) == 0
    assert asked == [("ray", 3, "auto", "cpu")]
    with MQBench.open(path, readonly=True) as bench:
        assert bench.meta["sessions"][-1]["executor"] == {"executor": "fake-ray", "workers": 3}


def test_cli_build_refuses_ray_options_without_ray(tmp_path, tiny):
    argv = ["bench", "build", str(tmp_path / "x.mqbench"), "--model", "tiny", "-n", "2", "--workers", "2"]
    with pytest.raises(MixqError, match=r"^--workers and --address need --executor ray"):
        _run(argv)
    assert not (tmp_path / "x.mqbench").exists()


def test_shards_split_the_work_and_match_a_single_build(tmp_path, tiny):
    path = tmp_path / "sh.mqbench"
    build_benchmark(path, "tiny", n=7, samples=8, progress=False, shard=(0, 2)).close()
    assert len(tiny) == 4
    with build_benchmark(path, "tiny", n=7, samples=8, progress=False, shard=(1, 2)) as bench:
        assert len(tiny) == 7 and len(set(tiny)) == 7  # no configuration labelled twice
        sharded = {e.bits_tuple: e.top1 for e in bench.entries()}
    with build_benchmark(tmp_path / "one.mqbench", "tiny", n=7, samples=8, progress=False) as one:
        assert sharded == {e.bits_tuple: e.top1 for e in one.entries()}
    with pytest.raises(MixqError, match="shard"):
        build_benchmark(path, "tiny", n=7, samples=8, progress=False, shard=(2, 2))


# -- building through an executor -------------------------------------------------------------------
class _KillFirstActorAfterOneResult(Executor):
    """Wraps the Ray executor: once the first label of a build arrives, SIGKILLs one of the pool's actors."""

    name = "ray"

    def __init__(self, inner: Executor) -> None:
        self.inner, self.workers = inner, inner.workers
        self.sessions: list = []

    def session(self, state):
        pool = self.inner.session(state)
        self.sessions.append(pool)
        victim = pool.pids()[0]
        real_map = pool.map

        def map_killing(fn, items, on_result=None, **kw):
            def first_kills(i, r):
                if not self.killed:
                    self.killed.append(victim)
                    os.kill(victim, signal.SIGKILL)
                on_result(i, r)
            return real_map(fn, items, on_result=first_kills, **kw)

        self.killed: list[int] = []
        pool.map = map_killing
        return pool


def test_ray_build_equals_serial_and_records_the_executor(tmp_path, tiny, ray_executor):
    with build_benchmark(tmp_path / "s.mqbench", "tiny", n=8, samples=8, progress=False) as serial:
        expected = {e.bits_tuple: e.top1 for e in serial.entries()}
        assert serial.meta["sessions"][0]["executor"] == {"executor": "serial", "workers": 1}
    with build_benchmark(tmp_path / "r.mqbench", "tiny", n=8, samples=8, progress=False,
                         executor=ray_executor) as bench:
        assert {e.bits_tuple: e.top1 for e in bench.entries()} == expected
        assert len(bench) == 8  # (entries are stored in the order labels arrive, not necessarily sampling order)
        assert bench.meta["sessions"][0]["executor"]["executor"] == "ray"
        assert bench.meta["sessions"][0]["executor"]["workers"] == 2


def test_ray_build_with_a_killed_actor_loses_nothing_and_records_nothing_twice(tmp_path, tiny, ray_executor):
    with build_benchmark(tmp_path / "s.mqbench", "tiny", n=10, samples=8, progress=False) as serial:
        expected = {e.bits_tuple: e.top1 for e in serial.entries()}
    killer = _KillFirstActorAfterOneResult(ray_executor)
    with build_benchmark(tmp_path / "k.mqbench", "tiny", n=10, samples=8, progress=False, executor=killer) as bench:
        got = [(e.bits_tuple, e.top1) for e in bench.entries()]
    assert len(killer.killed) == 1 and killer.sessions[0].replaced == 1
    assert len(got) == 10 and dict(got) == expected  # every configuration once, with the serial label
    with sqlite3.connect(tmp_path / "k.mqbench") as con:  # and nothing twice in the file itself
        rows = con.execute("SELECT COUNT(*) FROM configs").fetchone()[0]
    assert rows == 10
