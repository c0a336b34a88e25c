"""An EMQ formula search end to end: benchmark -> sources -> formula search -> held-out comparison -> files.

Files in ``out``: ``genotype.json`` (the best formula), ``formula.txt``, ``history.json`` (best / mean
fitness per iteration, screening counts), ``result.json`` (held-out metrics of the evolved formula beside
every registered hand-crafted proxy, settings, timings, library versions) and ``search_state.json`` (the
checkpoint a rerun resumes from). :func:`mixq.reports.write_emq_report` draws ``report.md`` and
``fitness.png`` from them.

The output folder is locked for the run and every file is written atomically. The checkpoint carries a
signature: the benchmark (its path and a sha256 of its model, layers and labelled entries), the model's
weights and the labelled images of the sources (sha256), the search settings and the baselines; a rerun
with any of them changed is refused naming each, unless ``overwrite`` discards the old run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixq.bench import MQBench
from mixq.emq.inputs import compute_inputs, source_summary
from mixq.emq.proxy import FormulaProxy
from mixq.emq.search import SCREEN_REASONS, EMQConfig, FormulaFitness, SearchState, load_state, run_search
from mixq.errors import MixqError
from mixq.evaluation.task import load_task
from mixq.fileio import atomic_write_json, atomic_write_text, locked, remove_files
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


#: What a search writes into its output folder (``overwrite`` removes these, and only these).
RUN_FILES = ("search_state.json", "config.json", "genotype.json", "formula.txt", "history.json", "result.json",
             "report.md", "fitness.png")


def bench_sha256(meta: dict[str, Any], entries: list[Any]) -> str:
    """sha256 of what a benchmark says: its model, checkpoint, layers and every labelled entry.

    Args:
        meta: the benchmark's meta table.
        entries: its entries (:class:`mixq.bench.Entry`).

    Returns:
        The hex digest (unchanged by build sessions; changed by any added or relabelled entry).
    """
    content = {"model": meta.get("model"), "checkpoint_sha256": meta.get("checkpoint_sha256"),
               "layer_names": meta.get("layer_names"), "layer_params": meta.get("layer_params"),
               "entries": [[e.idx, list(e.bits_tuple), e.top1] for e in sorted(entries, key=lambda e: e.idx)]}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@dataclass
class _SearchData:
    """A benchmark split into training / held-out configurations, with the model's labelled samples."""

    model: str
    meta: dict[str, Any]
    identity: dict[str, Any]  # the benchmark's and the task's content digests, for the resume signature
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
        digest = bench_sha256(meta, train + held)
    if len(train) < 3 or len(held) < 3:
        raise MixqError(f"benchmark {str(bench_path)!r} is too small to split: {len(train)} train / {len(held)} "
                        f"held-out configurations (need at least 3 each)")
    task = load_task(model, samples=config.proxy_batch, seed=config.seed, data_root=data_root,
                     model_root=model_root, n_test=10)
    qm = QuantModel(task.model, calib=task.calib)
    if list(meta["layer_names"]) != qm.layer_names:
        raise MixqError(f"benchmark {str(bench_path)!r} has other layers than model {model!r}")
    task_id = {k: v for k, v in task.identity().items() if k not in ("n_test", "test_sha256", "eval_split")}
    identity = {"bench": str(Path(bench_path).resolve()), "bench_sha256": digest, "task": task_id}
    return _SearchData(
        model=model, meta=meta, identity=identity, qm=qm, x=task.calib, y=task.calib_set.labels,
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
    overwrite: bool = False,
) -> dict[str, Any]:
    """Search a proxy formula on a benchmark's training split and report it on the held-out split.

    Args:
        bench_path: MQ benchmark file (``mixq bench build``).
        out: output folder (created and locked for the run; a ``search_state.json`` there of the same
            settings is resumed, of other settings refused naming them).
        config: search settings (default :class:`EMQConfig`).
        data_root: data folder.
        model_root: checkpoint folder.
        baselines: also rank the hand-crafted proxies on the held-out split: True for every registered one,
            or a list of names.
        progress: progress bars.
        stats_cache: ``.npz`` file reusing / storing the hand-crafted proxies' statistics
            (:class:`mixq.proxies.cache.StatsCache`).
        overwrite: discard an earlier run's files in ``out`` (:data:`RUN_FILES`) instead of resuming it.

    Returns:
        The result dict (also written to ``out/result.json``).

    Raises:
        MixqError: another run holds ``out``, or ``out`` holds a search of other settings (each named).
    """
    config = config or EMQConfig()
    out = output_folder(out)
    with locked(out):
        return _search_locked(bench_path, out, config, data_root, model_root, baselines, progress, stats_cache,
                              overwrite)


def _search_locked(bench_path: str | os.PathLike, out: Path, config: EMQConfig, data_root: str | os.PathLike | None,
                   model_root: str | os.PathLike | None, baselines: bool | list[str], progress: bool,
                   stats_cache: str | os.PathLike | None, overwrite: bool) -> dict[str, Any]:
    t_start = time.perf_counter()
    data = _load_search_data(bench_path, config, data_root, model_root)
    if overwrite:
        remove_files(out, list(RUN_FILES))
    signature = {**data.identity, "baselines": baselines if isinstance(baselines, bool) else list(baselines)}
    state_path = out / "search_state.json"
    load_state(state_path, config, signature)  # refuse a stale checkpoint before any work
    qm, x, y = data.qm, data.x, data.y
    t0 = time.perf_counter()
    inputs = compute_inputs(qm, qm.layer_names, x, y, sources=config.sources,
                            hessian_samples=config.hessian_samples, seed=config.seed)
    inputs_seconds = time.perf_counter() - t0
    fitness = FormulaFitness(inputs, data.train_bits, data.train_acc, config.metric, config.stability)
    atomic_write_json(out / "config.json", {"bench": str(bench_path), **config.to_dict()})
    state = run_search(config, fitness, state_path, progress=progress, signature=signature)
    best, best_fit = state.best()
    best.save(out / "genotype.json")
    atomic_write_text(out / "formula.txt", best.formula() + "\n")

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
    atomic_write_json(out / "history.json", {"history": state.history, "screening": result["screening"]},
                      indent=None)
    atomic_write_json(out / "result.json", result)
    return result
