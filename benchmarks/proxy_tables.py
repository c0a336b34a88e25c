"""Markdown tables for the README from result files (no computation).

* the correlation of every proxy with a benchmark, from ``mixq proxies rank --json FILE``;
* the held-out comparison of an evolved formula with the hand-crafted proxies, from
  ``mixq emq search``'s ``result.json``;
* bit allocations at one budget side by side (EvoQ, ILP with a proxy, uniform), from their ``result.json``.

    python benchmarks/proxy_tables.py --rank results/proxies-rank-resnet20-jpeg.json \\
        --emq results/emq-resnet20-jpeg/result.json \\
        --evoq results/evoq-resnet20-jpeg-3bit/result.json \\
        --allocations results/allocate-hawq-v2-resnet20-jpeg-3bit/result.json results/allocate-emq-.../result.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"


def rank_table(path: str) -> str:
    """Correlation table from ``mixq proxies rank --json`` output.

    Args:
        path: the JSON file.

    Returns:
        Markdown.
    """
    data = json.loads(Path(path).read_text())
    results = data["results"]
    sample_key = next(k for k in results[0] if k.startswith("sample"))
    rows = sorted(results, key=lambda r: -(r["all"]["kendall"] if r["all"]["kendall"] == r["all"]["kendall"] else -9))
    out = [f"| proxy | Kendall (all) | Spearman (all) | Pearson (all) | Sp top-50% (all) | Sp top-20% (all) | "
           f"Kendall ({sample_key[6:]}) | Spearman ({sample_key[6:]}) | statistics s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        a, s = r["all"], r[sample_key]
        out.append(f"| {r['proxy']} | {_f(a['kendall'])} | {_f(a['spearman'])} | {_f(a['pearson'])} | "
                   f"{_f(a['spearman_top50'])} | {_f(a['spearman_top20'])} | {_f(s['kendall'])} | "
                   f"{_f(s['spearman'])} | {_f(r['stats_seconds'], 1)} |")
    return "\n".join(out)


def allocation_table(evoq: str | None, allocations: list[str]) -> str:
    """Top-1 of allocations at one budget: uniform, EvoQ, and ILP with each proxy.

    Args:
        evoq: EvoQ ``result.json`` (gives FP32 and uniform too), or None.
        allocations: ``mixq allocate`` / ``mixq emq allocate`` ``result.json`` files.

    Returns:
        Markdown.
    """
    out = ["| method | avg bits | weights MB | top-1 % | + feature calibration |", "| --- | --- | --- | --- | --- |"]
    if evoq:
        e = json.loads(Path(evoq).read_text())
        out.append(f"| FP32 | 32 | {e['fp32_size_mb']:.4f} | {e['fp32_top1']:.2f} | |")
        if e.get("uniform_top1") is not None:
            out.append(f"| uniform {e['uniform_bits']}-bit | {e['uniform_bits']:.3f} | | {e['uniform_top1']:.2f} | |")
        out.append(f"| EvoQ search (output MSE fitness) | {e['avg_bits']:.3f} | {e['size_mb']:.4f} | "
                   f"{e['search_top1']:.2f} | {_f(e.get('quant_top1'), 2)} |")
    for path in allocations:
        a = json.loads(Path(path).read_text())
        name = "EMQ evolved proxy" if str(a.get("proxy_name", "")).startswith("emq:") else a["proxy"]
        out.append(f"| {name} + ILP | {a['avg_bits']:.3f} | {a['size_mb']:.4f} | {a['quant_top1']:.2f} | "
                   f"{_f(a.get('calibrated_top1'), 2)} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", help="mixq proxies rank --json output")
    ap.add_argument("--emq", help="mixq emq search result.json")
    ap.add_argument("--evoq", help="EvoQ result.json at the same budget")
    ap.add_argument("--allocations", nargs="*", default=[], help="allocation result.json files")
    args = ap.parse_args()
    if args.rank:
        print(rank_table(args.rank), end="\n\n")
    if args.emq:
        from mixq.reports.emq import comparison_table

        print(comparison_table(json.loads(Path(args.emq).read_text())), end="\n\n")
    if args.evoq or args.allocations:
        print(allocation_table(args.evoq, args.allocations))


if __name__ == "__main__":
    main()
