"""``mixq emq search`` end to end: benchmark -> sources -> formula search -> held-out comparison -> artefacts.

Artefacts in ``out``: ``genotype.json`` (the best formula), ``formula.txt``, ``history.json`` (best / mean
fitness per iteration, screening counts), ``fitness.png``, ``result.json`` (held-out metrics of the
evolved formula beside every registered hand-crafted proxy, settings, timings, library versions),
``report.md`` and ``search_state.json`` (the checkpoint a rerun resumes from).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mixq.bench import MQBench
from mixq.emq.inputs import compute_inputs, source_summary
from mixq.emq.proxy import FormulaProxy
from mixq.emq.search import SCREEN_REASONS, EMQConfig, FormulaFitness, SearchState, run_search
from mixq.errors import MixqError
from mixq.evaluation.task import load_task
from mixq.provenance import versions
from mixq.proxies import get_proxy, list_proxies, stats_for
from mixq.proxies.cache import StatsCache, cached_stats
from mixq.proxies.rank import rank_metrics
from mixq.quant.model import QuantModel


def plot_history(history: list[dict[str, float]], path: str | os.PathLike, metric: str) -> None:
    """Best and mean population fitness per iteration.

    Args:
        history: ``SearchState.history``.
        path: PNG file.
        metric: fitness metric name (axis label).
    """
    from mixq.reports.evoq import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    it = [h["iteration"] for h in history]
    ax.plot(it, [h["best"] for h in history], label="best")
    ax.plot(it, [h["mean"] for h in history], label="population mean")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{metric} (training configurations)")
    ax.set_title("EMQ proxy-formula search")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
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
    x, y = task.calib, task.calib_set.labels
    t0 = time.perf_counter()
    inputs = compute_inputs(qm, qm.layer_names, x, y, sources=config.sources,
                            hessian_samples=config.hessian_samples, seed=config.seed)
    inputs_seconds = time.perf_counter() - t0
    train_bits = np.array([e.bits_tuple for e in train])
    held_bits = np.array([e.bits_tuple for e in held])
    train_acc = np.array([e.top1 for e in train])
    held_acc = np.array([e.top1 for e in held])
    fitness = FormulaFitness(inputs, train_bits, train_acc, config.metric)
    (out / "config.json").write_text(json.dumps({"bench": str(bench_path), **config.to_dict()}, indent=1))
    t0 = time.perf_counter()
    state = run_search(config, fitness, out / "search_state.json", progress=progress)
    search_seconds = state.seconds
    best, best_fit = state.best()
    best.save(out / "genotype.json")
    (out / "formula.txt").write_text(best.formula() + "\n")

    def metrics_of(proxy, stats) -> dict[str, Any]:
        return {"train": rank_metrics(proxy.score(stats, train_bits), train_acc),
                "heldout": rank_metrics(proxy.score(stats, held_bits), held_acc),
                "all": rank_metrics(proxy.score(stats, np.concatenate([train_bits, held_bits])),
                                    np.concatenate([train_acc, held_acc]))}

    rows = []
    evolved = FormulaProxy(best, hessian_samples=config.hessian_samples)
    st = stats_for(qm, evolved, x, y, seed=config.seed)
    rows.append({"proxy": "evolved", "formula": best.formula(), "stats_seconds": st.seconds, **metrics_of(evolved, st)})
    cache = None
    if stats_cache is not None:
        cache = StatsCache(stats_cache, str(meta.get("checkpoint_sha256")), qm.layer_names)
    if baselines:
        for name in list_proxies() if baselines is True else list(baselines):
            p = get_proxy(name)
            st = cached_stats(qm, p, x, y, config.seed, cache)
            rows.append({"proxy": name, "stats_seconds": st.seconds, **metrics_of(p, st)})
    hand = [r for r in rows if r["proxy"] != "evolved"]
    best_hand = max(hand, key=lambda r: r["heldout"]["kendall"]) if hand else None
    result: dict[str, Any] = {
        "bench": str(bench_path),
        "model": model,
        "bench_entries": len(train) + len(held),
        "split": {"train": len(train), "heldout": len(held), "seed": config.seed},
        "config": config.to_dict(),
        "genotype": best.to_dict(),
        "formula": best.formula(),
        "train_fitness": best_fit,
        "screening": screening_summary(state),
        "search_seconds": search_seconds,
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
    plot_history(state.history, out / "fitness.png", config.metric)
    write_report(result, out / "report.md")
    return result


def comparison_table(result: dict[str, Any]) -> str:
    """Markdown table: held-out Kendall / Spearman / Pearson / top-k Spearman of every proxy.

    Args:
        result: :func:`emq_search` result.

    Returns:
        The table.
    """
    lines = ["| proxy | Kendall | Spearman | Pearson | Sp@50% | Sp@20% | train Kendall | stats s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows = sorted(result["proxies"], key=lambda r: -np.nan_to_num(r["heldout"]["kendall"], nan=-9))
    for r in rows:
        h = r["heldout"]
        name = f"**{r['proxy']}**" if r["proxy"] == "evolved" else r["proxy"]
        lines.append(f"| {name} | {h['kendall']:.3f} | {h['spearman']:.3f} | {h['pearson']:.3f} | "
                     f"{h['spearman_top50']:.3f} | {h['spearman_top20']:.3f} | {r['train']['kendall']:.3f} | "
                     f"{r['stats_seconds']:.1f} |")
    return "\n".join(lines)


def write_report(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Markdown report of a search.

    Args:
        result: :func:`emq_search` result.
        path: output file.
    """
    s = result["screening"]
    reasons = ", ".join(f"{k} {v}" for k, v in s["by_reason"].items() if v)
    gain = result["kendall_gain_over_best_handcrafted"]
    text = [
        f"# EMQ proxy search on {result['model']}",
        "",
        f"Benchmark `{result['bench']}`: {result['bench_entries']} configurations, seeded split "
        f"(seed {result['split']['seed']}) into {result['split']['train']} training / "
        f"{result['split']['heldout']} held-out. Fitness = {result['config']['metric']} on the training part; "
        "every number below is on the held-out part.",
        "",
        f"Evolved formula: `{result['formula']}`",
        "",
        comparison_table(result),
        "",
        f"Kendall gain over the best hand-crafted proxy ({result['best_handcrafted']}): "
        + ("n/a" if gain is None else f"{gain:+.3f}"),
        "",
        f"Search: {s['candidates']} candidates in {result['search_seconds']:.0f} s "
        f"(sources computed once in {result['inputs_seconds']:.1f} s); screened {s['screened']} "
        f"({100 * s['rate']:.1f} %): {reasons}.",
        "",
        "![fitness](fitness.png)",
        "",
    ]
    Path(path).write_text("\n".join(text))
