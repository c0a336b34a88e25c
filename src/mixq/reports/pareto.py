"""A Pareto run's picture and table, drawn from its ``pareto.json`` (written by ``mixq evoq --pareto`` and
``mixq allocate --pareto``).

The record's shape (every cost per sample or in MB; top-1 in %)::

    {"method": "evoq" | "allocate", "model": ..., "cost": "bits" | "mb" | "bitops", "seed": ..., "samples": ...,
     "test_split": ..., "n_test": ...,
     "fp32": {"top1", "size_mb", "bitops"},
     "uniform": [{"weight_bits", "act_bits", "avg_bits", "size_mb", "bitops", "top1"}, ...],
     "front": [{"score", "avg_bits", "size_mb", "bitops", "top1", "top1_calibrated"?, "config"}, ...], ...}

``score`` is what the run minimised beside the cost (EvoQ: output MSE on the calibration samples; an ILP
sweep: the proxy's summed cost).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mixq.reports.plots import pyplot
from mixq.reports.tables import grid_table


def plot_pareto(record: dict, path: str | os.PathLike) -> None:
    """Top-1 against weight size (MB) and against GBitOps: the front (before and, when measured, after
    calibration), the uniform configurations and FP32, on the same axes.

    Args:
        record: a ``pareto.json`` dict.
        path: PNG file.
    """
    plt = pyplot()
    from matplotlib.ticker import ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    front = sorted(record["front"], key=lambda p: p["size_mb"])
    fp32 = record["fp32"]
    for ax, key, label, scale in ((axes[0], "size_mb", "weight size (MB)", 1.0),
                                  (axes[1], "bitops", "GBitOps per sample", 1e-9)):
        pts = sorted(front, key=lambda p: p[key])
        ax.plot([p[key] * scale for p in pts], [p["top1"] for p in pts], "o-", ms=4,
                label=f"{record['method']} front")
        cal = [p for p in pts if p.get("top1_calibrated") is not None]
        if cal:
            ax.plot([p[key] * scale for p in cal], [p["top1_calibrated"] for p in cal], "s--", ms=4,
                    label="front + feature calibration")
        uni = record.get("uniform", [])
        if uni:
            ax.scatter([u[key] * scale for u in uni], [u["top1"] for u in uni], marker="^", s=30, color="gray",
                       label="uniform WxAy", zorder=3)
            ucal = [u for u in uni if u.get("top1_calibrated") is not None]
            if ucal:
                ax.scatter([u[key] * scale for u in ucal], [u["top1_calibrated"] for u in ucal], marker="v", s=30,
                           color="tab:red", label="uniform + calibration", zorder=3)
            for u in uni:
                ax.annotate(f"W{u['weight_bits']}A{u['act_bits']}", (u[key] * scale, u["top1"]), fontsize=6,
                            xytext=(3, -8), textcoords="offset points", color="gray")
        ax.axhline(fp32["top1"], color="k", lw=0.8, ls="--", label=f"FP32 {fp32['top1']:.2f}")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{record['model']}: accuracy vs cost ({record.get('test_split', 'test')}, seed {record['seed']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pareto_table(record: dict) -> str:
    """The front and the uniform points as one markdown table, cheapest first.

    Args:
        record: a ``pareto.json`` dict.

    Returns:
        The table text.
    """
    has_cal = any(p.get("top1_calibrated") is not None for p in record["front"])
    has_cal = has_cal or any(u.get("top1_calibrated") is not None for u in record.get("uniform", []))
    header = ["point", "avg bits", "weights MB", "GBitOps", "score", "top-1 %"] + (["+ calibration"] if has_cal else [])
    rows = [["FP32", "32", f"{record['fp32']['size_mb']:.4f}", f"{record['fp32']['bitops'] / 1e9:.3f}", "",
             f"{record['fp32']['top1']:.2f}"] + ([""] if has_cal else [])]
    for u in sorted(record.get("uniform", []), key=lambda u: u["bitops"]):
        cal = u.get("top1_calibrated")
        rows.append([f"uniform W{u['weight_bits']}A{u['act_bits']}", f"{u['avg_bits']:.3f}", f"{u['size_mb']:.4f}",
                     f"{u['bitops'] / 1e9:.3f}", "", f"{u['top1']:.2f}"]
                    + ([f"{cal:.2f}" if cal is not None else "-"] if has_cal else []))
    for i, p in enumerate(sorted(record["front"], key=lambda p: p["size_mb"])):
        cal = p.get("top1_calibrated")
        rows.append([f"front {i}", f"{p['avg_bits']:.3f}", f"{p['size_mb']:.4f}", f"{p['bitops'] / 1e9:.3f}",
                     f"{p['score']:.4g}", f"{p['top1']:.2f}"] + ([f"{cal:.2f}" if cal is not None else "-"]
                                                                  if has_cal else []))
    return grid_table(header, rows)


def write_pareto_report(folder: str | os.PathLike) -> None:
    """Draw ``pareto.png`` and ``report.md`` from a Pareto run's ``pareto.json``.

    Args:
        folder: the run's output folder.
    """
    d = Path(folder)
    record = json.loads((d / "pareto.json").read_text())
    plot_pareto(record, d / "pareto.png")
    text = (f"# {record['model']}: Pareto front ({record['method']}, cost {record['cost']})\n\n"
            f"Seed {record['seed']}, {record['samples']} calibration samples, top-1 on {record['test_split']} "
            f"({record['n_test']} images).\n\n{pareto_table(record)}\n\n![front](pareto.png)\n")
    (d / "report.md").write_text(text)
