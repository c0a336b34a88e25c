"""An EMQ formula search end to end: benchmark -> sources -> formula search -> held-out comparison -> files.

Files in ``out``: ``genotype.json`` (the best formula), ``formula.txt``, ``history.json`` (best / mean
fitness per iteration, screening counts), ``result.json`` (held-out metrics of the evolved formula beside
every registered hand-crafted proxy, settings, timings, library versions) and ``search_state.json`` (the
checkpoint a rerun resumes from). :func:`mixq.reports.write_emq_report` draws ``report.md`` and
``fitness.png`` from them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mixq.bench import MQBench
from mixq.emq.inputs import compute_inputs, source_summary
from mixq.emq.proxy import FormulaProxy
from mixq.emq.search import SCREEN_REASONS, EMQConfig, FormulaFitness, SearchState, run_search
from mixq.errors import MixqError
from mixq.evaluation.task import load_task
from mixq.paths import output_folder
from mixq.provenance import versions
from mixq.proxies import get_proxy, list_proxies, stats_for
from mixq.proxies.cache import StatsCache, cached_stats
from mixq.proxies.rank import rank_metrics
from mixq.quant.model import QuantModel


def screening_summary(state: SearchState) -> dict[str, Any]:
    """Counts and rates of screened candidates.

    Args:
        state: search state.

    Returns:
        ``{"candidates", "screened", "rate", "by_reason", "scored"}``.
    """
    by = {r: int(state.screened.get(r, 0)) for r in SCREEN_REASONS}
    screened = sum(by.values())
    n = max(state.candidates, 1)
    return {"candidates": state.candidates, "screened": screened, "rate": screened / n,
            "scored": state.candidates - screened, "by_reason": by}


@dataclass
class _SearchData:
    """A benchmark split into training / held-out configurations, with the model's labelled samples."""

    model: str
    meta: dict[str, Any]
    qm: QuantModel
    x: torch.Tensor  # (N, C, H, W) normalised calibration images
    y: torch.Tensor  # (N,) their labels
    train_bits: np.ndarray  # (n_train, L)
    train_acc: np.ndarray  # (n_train,)
    held_bits: np.ndarray  # (n_held, L)
    held_acc: np.ndarray  # (n_held,)

    def metrics_of(self, proxy, stats) -> dict[str, Any]:
        """Rank metrics of a proxy on the training part, the held-out part and the whole benchmark."""
        return {"train": rank_metrics(proxy.score(stats, self.train_bits), self.train_acc),
                "heldout": rank_metrics(proxy.score(stats, self.held_bits), self.held_acc),
                "all": rank_metrics(proxy.score(stats, np.concatenate([self.train_bits, self.held_bits])),
                                    np.concatenate([self.train_acc, self.held_acc]))}


def _load_search_data(
    bench_path: str | os.PathLike, config: EMQConfig, data_root: str | os.PathLike | None,
    model_root: str | os.PathLike | None,
) -> _SearchData:
    with MQBench.open(bench_path, readonly=True) as bench:
        train, held = bench.split(config.train_fraction, seed=config.seed)
        meta = bench.meta
        model = bench.model
    if len(train) < 3 or len(held) < 3:
        raise MixqError(f"benchmark {str(bench_path)!r} is too small to split: {len(train)} train / {len(held)} "
                        f"held-out configurations (need at least 3 each)")
    task = load_task(model, samples=config.proxy_batch, seed=config.seed, data_root=data_root,
                     model_root=model_root, n_test=10)
    qm = QuantModel(task.model, calib=task.calib)
    if list(meta["layer_names"]) != qm.layer_names:
        raise MixqError(f"benchmark {str(bench_path)!r} has other layers than model {model!r}")
    return _SearchData(
        model=model, meta=meta, qm=qm, x=task.calib, y=task.calib_set.labels,
        train_bits=np.array([e.bits_tuple for e in train]), train_acc=np.array([e.top1 for e in train]),
        held_bits=np.array([e.bits_tuple for e in held]), held_acc=np.array([e.top1 for e in held]),
    )


def emq_search(
    bench_path: str | os.PathLike,
    out: str | os.PathLike,
    config: EMQConfig | None = None,
    data_root: str | os.PathLike | None = None,
    model_root: str | os.PathLike | None = None,
    baselines: bool | list[str] = True,
    progress: bool = True,
    stats_cache: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Search a proxy formula on a benchmark's training split and report it on the held-out split.

    Args:
        bench_path: MQ benchmark file (``mixq bench build``).
        out: output folder (created; a ``search_state.json`` there is resumed).
        config: search settings (default :class:`EMQConfig`).
        data_root: data folder.
        model_root: checkpoint folder.
        baselines: also rank the hand-crafted proxies on the held-out split: True for every registered one,
            or a list of names.
        progress: progress bars.
        stats_cache: ``.npz`` file reusing / storing the hand-crafted proxies' statistics
            (:class:`mixq.proxies.cache.StatsCache`).

    Returns:
        The result dict (also written to ``out/result.json``).
    """
    config = config or EMQConfig()
    out = output_folder(out)
    t_start = time.perf_counter()
    data = _load_search_data(bench_path, config, data_root, model_root)
    qm, x, y = data.qm, data.x, data.y
    t0 = time.perf_counter()
    inputs = compute_inputs(qm, qm.layer_names, x, y, sources=config.sources,
                            hessian_samples=config.hessian_samples, seed=config.seed)
    inputs_seconds = time.perf_counter() - t0
    fitness = FormulaFitness(inputs, data.train_bits, data.train_acc, config.metric)
    (out / "config.json").write_text(json.dumps({"bench": str(bench_path), **config.to_dict()}, indent=1))
    state = run_search(config, fitness, out / "search_state.json", progress=progress)
    best, best_fit = state.best()
    best.save(out / "genotype.json")
    (out / "formula.txt").write_text(best.formula() + "\n")

    evolved = FormulaProxy(best, hessian_samples=config.hessian_samples)
    st = stats_for(qm, evolved, x, y, seed=config.seed)
    rows = [{"proxy": "evolved", "formula": best.formula(), "stats_seconds": st.seconds,
             **data.metrics_of(evolved, st)}]
    if baselines:
        cache = None
        if stats_cache is not None:
            cache = StatsCache(stats_cache, str(data.meta.get("checkpoint_sha256")), qm.layer_names)
        for name in list_proxies() if baselines is True else list(baselines):
            p = get_proxy(name)
            st = cached_stats(qm, p, x, y, config.seed, cache)
            rows.append({"proxy": name, "stats_seconds": st.seconds, **data.metrics_of(p, st)})
    hand = [r for r in rows if r["proxy"] != "evolved"]
    best_hand = max(hand, key=lambda r: r["heldout"]["kendall"]) if hand else None
    result: dict[str, Any] = {
        "bench": str(bench_path),
        "model": data.model,
        "bench_entries": len(data.train_acc) + len(data.held_acc),
        "split": {"train": len(data.train_acc), "heldout": len(data.held_acc), "seed": config.seed},
        "config": config.to_dict(),
        "genotype": best.to_dict(),
        "formula": best.formula(),
        "train_fitness": best_fit,
        "screening": screening_summary(state),
        "search_seconds": state.seconds,
        "inputs_seconds": inputs_seconds,
        "inputs": source_summary(inputs),
        "total_seconds": time.perf_counter() - t_start,
        "proxies": rows,
        "best_handcrafted": None if best_hand is None else best_hand["proxy"],
        "kendall_gain_over_best_handcrafted": None if best_hand is None else
            rows[0]["heldout"]["kendall"] - best_hand["heldout"]["kendall"],
        "proxy_batch": config.proxy_batch,
        "versions": versions(),
    }
    (out / "history.json").write_text(json.dumps({"history": state.history, "screening": result["screening"]}))
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result
