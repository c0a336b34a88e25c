"""Every EMQ study of the README in one process: each benchmark's sources are computed once and shared.

The studies (all with split seed 0, fractions 50 / 25 / 25 %, seeds 0 1 2, 1,000 candidates per seed):

* per architecture: evolved on one benchmark, the other two as never-searched transfer benchmarks;
* leave-one-architecture-out: evolved on two, the third as transfer;
* joint: evolved on all three, ``--reduce min`` (pre-declared primary) and ``mean``;
* joint and leave-one-out with ``--objective gain`` (each benchmark's Kendall minus its best hand-crafted
  proxy's on the same part).

Every study also scores the ``--fresh`` benchmarks that exist (another ``bench build --seed``), in full.
Searches resume from each study's ``seed-S/search_state.json``, so rerunning this script after a fresh
benchmark grew only rescoring costs. Then ``python benchmarks/emq_studies.py --readme README.md``.

    python benchmarks/emq_study_suite.py [--only joint loao-resnet18-jpeg ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mixq.emq.study import StudyConfig, load_bench, run_study  # noqa: E402

RES = ROOT / "results"
ARCHS = ("resnet20-jpeg", "mobilenetv2-jpeg", "resnet18-jpeg")


def bench_path(arch: str, fresh: int | None = None) -> str:
    """``results/mqbench-ARCH.sqlite`` or its ``-freshN`` twin, relative to the repository root."""
    suffix = f"-fresh{fresh}" if fresh else ""
    return f"results/mqbench-{arch}{suffix}.sqlite"


def studies() -> dict[str, dict]:
    """Study name -> ``{"search", "transfer", "reduce", "objective"}``."""
    out: dict[str, dict] = {
        "joint": {"search": list(ARCHS), "transfer": [], "reduce": "min", "objective": "kendall"},
        "gain-joint": {"search": list(ARCHS), "transfer": [], "reduce": "min", "objective": "gain"},
    }
    for objective, prefix in (("kendall", "loao-"), ("gain", "gain-loao-")):
        for a in ARCHS:
            out[f"{prefix}{a}"] = {"search": [o for o in ARCHS if o != a], "transfer": [a], "reduce": "min",
                                   "objective": objective}
    for a in ARCHS:
        out[a] = {"search": [a], "transfer": [o for o in ARCHS if o != a], "reduce": "min", "objective": "kendall"}
    out["joint-mean"] = {"search": list(ARCHS), "transfer": [], "reduce": "mean", "objective": "kendall"}
    return out


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", help="run only these studies (names as in results/emq-study-NAME)")
    p.add_argument("--no-fresh", action="store_true", help="do not score the fresh benchmarks")
    args = p.parse_args()
    plan = studies()
    unknown = set(args.only or ()) - set(plan)
    if unknown:
        raise SystemExit(f"unknown studies {sorted(unknown)}; known: {sorted(plan)}")
    names = args.only or list(plan)
    os.chdir(ROOT)  # the study records keep the relative benchmark paths
    base = StudyConfig()
    loaded = {}
    for a in ARCHS:
        loaded[a] = load_bench(bench_path(a), base)
    fresh = []
    for a in ARCHS:
        if not args.no_fresh and Path(bench_path(a, 1)).is_file():
            fresh.append(load_bench(bench_path(a, 1), base, fresh=True, like=loaded[a]))
    for name in names:
        s = plan[name]
        config = StudyConfig(reduce=s["reduce"], objective=s["objective"])
        t0 = time.perf_counter()
        r = run_study([bench_path(a) for a in s["search"]], RES / f"emq-study-{name}", config,
                      transfer=[bench_path(a) for a in s["transfer"]], fresh=[b.path for b in fresh],
                      stats_cache=RES / "proxy-stats", progress=False,
                      loaded=[*loaded.values(), *fresh])
        print(f"{name}: {r['formula']}  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
