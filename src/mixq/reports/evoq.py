"""The report of one EvoQ run, drawn from its result files: ``report.md`` and three PNG plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mixq.errors import MixqError
from mixq.evoq.sensitivity import SensitivityTable
from mixq.fileio import atomic_write_text
from mixq.reports.plots import plot_bits, plot_fitness, plot_sensitivity
from mixq.reports.tables import markdown_table


def evoq_report(result: dict, path: str | os.PathLike) -> None:
    """Write the Markdown report of one ``mixq evoq`` run from its ``result.json`` dict.

    Args:
        result: the run's result dict.
        path: Markdown file.
    """
    r = result
    lines = [
        f"# EvoQ on {r['model']}",
        "",
        f"Budget: {r['budget']}. {r['samples']} calibration samples (seed {r['seed']}) from the "
        f"{r['calib_split']} split; top-1 on {r['n_test']} images of the {r['test_split']} split; "
        f"activations {r['act_bits']}-bit; weight ranges: {r['weight_range']}.",
        "",
        markdown_table(
            [
                {"what": "FP32", "top1": r["fp32_top1"], "size": r["fp32_size_mb"], "bits": 32.0},
                {"what": f"uniform {r['uniform_bits']}-bit", "top1": r.get("uniform_top1"),
                 "size": r.get("uniform_size_mb"), "bits": float(r["uniform_bits"])},
                {"what": f"EvoQ search ({r['mutation']} mutation)", "top1": r["search_top1"],
                 "size": r["size_mb"], "bits": r["avg_bits"]},
                {"what": "EvoQ + feature calibration", "top1": r.get("quant_top1"),
                 "size": r["size_mb"], "bits": r["avg_bits"]},
            ],
            [("what", "model", ""), ("top1", "top-1 %", ".2f"), ("size", "weights MB", ".4f"),
             ("bits", "avg bits", ".3f")],
        ),
        "",
        f"Search: {r['iterations']} iterations, {r['evaluations']} fitness evaluations, "
        f"{r['search_seconds']:.1f} s; best output MSE {r['fitness']:.5g} "
        f"(initial population best {r['initial_fitness']:.5g}).",
        "",
        "![best fitness per iteration](fitness.png)",
        "",
        "![bits per layer](bits.png)",
        "",
        "![sensitivity](sensitivity.png)",
        "",
        "## Bits per layer",
        "",
        markdown_table(
            [{"layer": n, "bits": b, "params": p} for n, b, p in zip(r["layers"], r["bits"], r["params"])],
            [("layer", "layer", ""), ("params", "params", "d"), ("bits", "bits", "d")],
        ),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        "",
    ]
    atomic_write_text(path, "\n".join(lines))


def write_evoq_report(out: str | os.PathLike) -> list[Path]:
    """Draw the report of an EvoQ run folder from its ``result.json`` and ``sensitivity.json``.

    Args:
        out: the run folder written by :func:`mixq.evoq.pipeline`.

    Returns:
        The files written: ``fitness.png``, ``bits.png``, ``sensitivity.png`` (when the table is there)
        and ``report.md``.
    """
    out = Path(out)
    try:
        r = json.loads((out / "result.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MixqError(f"cannot read the EvoQ result {str(out / 'result.json')!r}: {exc}") from None
    written = [out / "fitness.png", out / "bits.png"]
    plot_fitness({f"{r['mutation']} mutation": r["best_history"]}, written[0], title=f"EvoQ on {r['model']}")
    plot_bits(r["layers"], r["bits"], r["params"], written[1],
              title=f"{r['model']}: {r['avg_bits']:.3f} avg bits, {r['size_mb']:.4f} MB")
    table_path = out / "sensitivity.json"
    if table_path.exists():
        table = SensitivityTable.from_dict(json.loads(table_path.read_text()), source=str(table_path))
        plot_sensitivity(table, out / "sensitivity.png",
                         title=f"{r['model']}: log10 output MSE, one layer quantized")
        written.append(out / "sensitivity.png")
    evoq_report(r, out / "report.md")
    written.append(out / "report.md")
    return written
