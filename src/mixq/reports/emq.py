"""The report of one EMQ formula search, drawn from its result files: ``report.md`` and ``fitness.png``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mixq.errors import MixqError
from mixq.fileio import atomic_write_text
from mixq.reports.plots import pyplot


def plot_history(history: list[dict[str, float]], path: str | os.PathLike, metric: str) -> None:
    """Best and mean population fitness per iteration.

    Args:
        history: ``SearchState.history``.
        path: PNG file.
        metric: fitness metric name (axis label).
    """
    plt = pyplot()
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
    atomic_write_text(path, "\n".join(text))


def write_emq_report(out: str | os.PathLike) -> list[Path]:
    """Draw the report of an EMQ search folder from its ``result.json`` and ``history.json``.

    Args:
        out: the folder written by :func:`mixq.emq.evolve`.

    Returns:
        The files written (``fitness.png``, ``report.md``).
    """
    out = Path(out)
    try:
        result = json.loads((out / "result.json").read_text())
        history = json.loads((out / "history.json").read_text())["history"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise MixqError(f"cannot read the EMQ search results in {str(out)!r}: {exc}") from None
    plot_history(history, out / "fitness.png", result["config"]["metric"])
    write_report(result, out / "report.md")
    return [out / "fitness.png", out / "report.md"]
