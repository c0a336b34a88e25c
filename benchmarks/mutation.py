"""Mutation testing of mixq's numerics core with mutmut (not part of CI).

mutmut makes one small change at a time in the source (``<`` -> ``<=``, ``1`` -> ``2``, ``and`` -> ``or``,
a dropped argument, ...) and runs the tests that reach the changed function; a mutant the tests do not
notice "survives". The score is killed / (killed + survived + no tests), timeouts counted as killed.

The run happens in a scratch copy of the checkout (``--workdir``), so the working tree never holds mutated
code and the set of modules can change from run to run. Running again in the same ``--workdir`` resumes:
mutants that already have a verdict are not run again (``--fresh`` starts over); ``--retest-survivors``
re-runs only the survivors after new tests were written (the tests are copied in anew on every call).

    pip install -e ".[mutation]"
    python benchmarks/mutation.py                          # the whole core, ~1-2 hours on 2 cores
    python benchmarks/mutation.py --modules quant/primitives.py proxies/rank.py
    python benchmarks/mutation.py --report-only            # re-read verdicts, write the JSON

Survivors judged equivalent (no test can tell them apart from the original) are explained in
``benchmarks/mutation_equivalent.json`` ({mutant name: reason}); the JSON result carries each survivor's diff
and, where given, that reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The numerics core, relative to src/mixq/.
CORE = [
    "quant/primitives.py",
    "quant/ranges.py",
    "quant/fold.py",
    "quant/modules.py",
    "evaluation/metrics.py",
    "evoq/sensitivity.py",
    "evoq/calibrate.py",
    "proxies/rank.py",
    "proxies/hawq.py",
    "proxies/hessian.py",
    "proxies/saliency.py",
    "proxies/ompq.py",
    "proxies/qe.py",
    "proxies/size.py",
    "allocate/ilp.py",
    "emq/ranking.py",
]

# Unit tests of the numerics (the CLI, export and resume tests are left out: they are slow and test the
# plumbing around these functions, not their arithmetic).
TESTS = [
    "tests/test_primitives.py",
    "tests/test_ranges.py",
    "tests/test_quant_model.py",
    "tests/test_reference_values.py",
    "tests/test_proxy_reference.py",
    "tests/test_proxies.py",
    "tests/test_rank.py",
    "tests/test_allocate.py",
    "tests/test_calibrate.py",
    "tests/test_evoq.py",
    "tests/test_emq.py",
    # Edge cases written against the survivors of the first run (each checked to kill its mutants).
    "tests/test_allocate_edges.py",
    "tests/test_calibrate_edges.py",
    "tests/test_quant_edges.py",
    "tests/test_proxies_edges.py",
    "tests/test_ranking_edges.py",
    # Any-module transforms and packed export exercise quantized modules outside the model zoo.
    "tests/test_any_module.py",
    "tests/test_export_packed.py",
]

KILLED = {"killed", "timeout", "caught by type check", "segfault"}


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(workdir: Path, modules: list[str], tests: list[str], fresh: bool) -> None:
    """Copy src/, tests/ and pyproject.toml (with a [tool.mutmut] table) into ``workdir``.

    Args:
        workdir: scratch folder; its ``mutants/`` (mutmut's state) is kept unless ``fresh``.
        modules: files to mutate, relative to ``src/mixq``.
        tests: pytest paths mutmut may run.
        fresh: delete earlier verdicts.
    """
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("src", "tests"):
        if (workdir / sub).exists():
            shutil.rmtree(workdir / sub)
        shutil.copytree(REPO / sub, workdir / sub, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # mutmut keeps a file it once copied unmutated (a module outside an earlier --modules) and takes it
    # for already mutated; remove such copies so every selected module gets its mutants.
    for mod in modules:
        copy = workdir / "mutants" / "src" / "mixq" / mod
        if copy.exists() and not copy.with_name(copy.name + ".meta").exists():
            copy.unlink()
    # Which tests reach which function is recorded once per run; the tests or modules may have changed.
    stats = workdir / "mutants" / "mutmut-stats.json"
    if stats.exists():
        stats.unlink()
    # A copied test folder must replace mutmut's older copy, or deleted tests linger there.
    if (workdir / "mutants" / "tests").exists():
        shutil.rmtree(workdir / "mutants" / "tests")
    text = (REPO / "pyproject.toml").read_text()
    if "[tool.mutmut]" in text:
        raise SystemExit("pyproject.toml already has a [tool.mutmut] table; this script writes its own")
    only = [f"src/mixq/{m}" for m in modules]
    text += (
        "\n[tool.mutmut]\n"
        f'source_paths = ["src"]\n'
        f"only_mutate = {_toml_list(only)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]\n'
        'process_isolation = "forkserver"\n'
        "use_git_change_detection = false\n"
        "timeout_multiplier = 5.0\n"
        "timeout_constant = 10.0\n"
    )
    (workdir / "pyproject.toml").write_text(text)


def _env() -> dict[str, str]:
    from mixq.paths import resolve_data_root, resolve_model_root

    env = dict(os.environ)
    # The scratch copy does not sit beside ../shared: name the folders explicitly.
    for var, fn in (("MIXQ_DATA", resolve_data_root), ("MIXQ_MODELS", resolve_model_root)):
        if var not in env:
            root = fn(None)
            if root is not None:
                env[var] = str(root)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


def mutmut(workdir: Path, args: list[str], log: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m mutmut ARGS`` in ``workdir``; stream to ``log`` when given."""
    cmd = [sys.executable, "-m", "mutmut", *args]
    if log is None:
        return subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True)
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        return subprocess.run(cmd, cwd=workdir, env=_env(), stdout=fh, stderr=subprocess.STDOUT, text=True)


def verdicts(workdir: Path, modules: list[str]) -> dict[str, dict[str, str]]:
    """Read mutmut's per-file ``.meta`` files: {module: {mutant name: status}}."""
    from mutmut.stats import status_by_exit_code

    out: dict[str, dict[str, str]] = {}
    for mod in modules:
        meta = workdir / "mutants" / "src" / "mixq" / (mod + ".meta")
        if not meta.exists():
            continue
        data = json.loads(meta.read_text())
        out[mod] = {k: status_by_exit_code[v] for k, v in data.get("exit_code_by_key", {}).items()}
    return out


def kind_of(diff: str) -> str:
    """``"message"`` when a mutant changes only the text of a string (mutmut's ``"XX" + s + "XX"`` or a case
    change), e.g. an error message; ``"code"`` otherwise."""
    minus = [ln[1:] for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    plus = [ln[1:] for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    if len(minus) != len(plus) or not minus:
        return "code"
    for a, b in zip(minus, plus):
        if a != b and b.replace("XX", "") != a and a.lower() != b.lower():
            return "code"
    return "message"


@contextlib.contextmanager
def _in(workdir: Path):
    """mutmut reads its config and state from the current folder."""
    here = os.getcwd()
    os.chdir(workdir)
    try:
        yield
    finally:
        os.chdir(here)


def _score(counts: dict[str, int]) -> float | None:
    judged = counts["killed"] + counts["survived"] + counts["no tests"]
    return round(counts["killed"] / judged, 4) if judged else None


def report(workdir: Path, modules: list[str], out: Path, seconds: float | None) -> dict:
    """Summarise verdicts, with each survivor's diff and the equivalence reason where one is written down."""
    from mixq.fileio import atomic_write_json
    from mixq.provenance import versions

    equivalent_file = REPO / "benchmarks" / "mutation_equivalent.json"
    equivalent = json.loads(equivalent_file.read_text()) if equivalent_file.exists() else {}
    per_module = {}
    survivors = []
    totals = {"killed": 0, "survived": 0, "no tests": 0, "not checked": 0, "other": 0}
    from mutmut.__main__ import get_diff_for_mutant

    with _in(workdir):
        for mod, by_name in verdicts(workdir, modules).items():
            counts = {"killed": 0, "survived": 0, "no tests": 0, "not checked": 0, "other": 0}
            for name, status in sorted(by_name.items()):
                counts["killed" if status in KILLED else status if status in counts else "other"] += 1
                if status in ("survived", "no tests", "suspicious"):
                    diff = get_diff_for_mutant(name, path=Path("src", "mixq", mod)).strip()
                    survivors.append({"module": mod, "mutant": name, "status": status, "kind": kind_of(diff),
                                      "diff": diff, "equivalent_because": equivalent.get(name)})
            per_module[mod] = {**counts, "total": len(by_name), "score": _score(counts)}
            for k in totals:
                totals[k] += counts[k]
    explained = sum(1 for s in survivors if s["equivalent_because"])
    without_equivalent = {**totals, "survived": totals["survived"] + totals["no tests"] - explained, "no tests": 0}
    result = {
        "tool": "mutmut",
        "modules": per_module,
        "totals": {**totals, "score": _score(totals),
                   "survivors_explained_equivalent": explained,
                   "survivors_unexplained": len(survivors) - explained},
        "survivors_by_kind": {k: sum(1 for s in survivors if s["kind"] == k) for k in ("code", "message")},
        "score_if_equivalent_removed": _score(without_equivalent),
        "survivors": survivors,
        "seconds_this_call": seconds,
        "versions": versions(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    return result


def print_table(result: dict) -> None:
    print(f"\n{'module':28s} {'total':>6s} {'killed':>7s} {'survived':>9s} {'no tests':>9s} {'score':>7s}")
    for mod, c in result["modules"].items():
        score = "-" if c["score"] is None else f"{100 * c['score']:.1f}%"
        print(f"{mod:28s} {c['total']:6d} {c['killed']:7d} {c['survived']:9d} {c['no tests']:9d} {score:>7s}")
    t = result["totals"]
    score = "-" if t["score"] is None else f"{100 * t['score']:.1f}%"
    print(f"{'all':28s} {sum(c['total'] for c in result['modules'].values()):6d} {t['killed']:7d} "
          f"{t['survived']:9d} {t['no tests']:9d} {score:>7s}")
    kinds = result["survivors_by_kind"]
    print(f"survivors: {kinds['code']} change code, {kinds['message']} only the text of a message; "
          f"explained as equivalent: {t['survivors_explained_equivalent']}, "
          f"unexplained: {t['survivors_unexplained']}")


def markdown_table(result: dict) -> str:
    """The per-module table of README (mutants, killed, survivors that change code / only a message)."""
    by = {}
    for s in result["survivors"]:
        by.setdefault(s["module"], {"code": 0, "message": 0, "eq": 0})
        by[s["module"]][s["kind"]] += 1
        by[s["module"]]["eq"] += bool(s["equivalent_because"])
    lines = ["| module | mutants | killed | score | survivors: code | message text only | explained as equivalent |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for mod, c in result["modules"].items():
        b = by.get(mod, {"code": 0, "message": 0, "eq": 0})
        score = "-" if c["score"] is None else f"{100 * c['score']:.1f} %"
        lines.append(f"| `{mod}` | {c['total']} | {c['killed']} | {score} | {b['code']} | {b['message']} | {b['eq']} |")
    t = result["totals"]
    kinds = result["survivors_by_kind"]
    total = sum(c["total"] for c in result["modules"].values())
    lines.append(f"| **all** | {total} | {t['killed']} | {100 * t['score']:.1f} % | {kinds['code']} | "
                 f"{kinds['message']} | {t['survivors_explained_equivalent']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", nargs="+", default=CORE, metavar="PATH",
                    help="files to mutate, relative to src/mixq (default: the numerics core)")
    ap.add_argument("--tests", nargs="+", default=TESTS, metavar="PATH", help="test files mutmut may run")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mixq-mutation"),
                    help="scratch copy of the checkout; mutmut's state lives here (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "mutation" / "mutation.json")
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 2, help="parallel mutant runs")
    ap.add_argument("--fresh", action="store_true", help="forget earlier verdicts in --workdir")
    ap.add_argument("--retest-survivors", nargs="*", default=None, metavar="PATH",
                    help="re-run only the survivors of earlier runs (of these modules; default all of --modules)")
    ap.add_argument("--report-only", action="store_true", help="do not run mutmut; summarise what is there")
    ap.add_argument("--markdown", action="store_true", help="also print the per-module table as Markdown")
    args = ap.parse_args()
    unknown = [m for m in args.modules if not (REPO / "src" / "mixq" / m).is_file()]
    if unknown:
        raise SystemExit(f"--modules: no such file under src/mixq: {', '.join(unknown)}")
    try:
        import mutmut as _  # noqa: F401
    except ImportError:
        raise SystemExit('mutmut is not installed: pip install -e ".[mutation]"') from None

    seconds = None
    if not args.report_only:
        prepare(args.workdir, args.modules, args.tests, args.fresh)
        log = args.workdir / "mutmut.log"
        names: list[str] = []
        retest = args.retest_survivors is not None
        if retest:
            which = args.retest_survivors or args.modules
            names = [n for mod, by in verdicts(args.workdir, args.modules).items() if mod in which
                     for n, s in by.items() if s not in KILLED]
            if not names:
                print("no survivors to re-test")
        t0 = time.perf_counter()
        if names or not retest:
            print(f"mutmut over {len(args.modules)} module(s); log: {log}")
            proc = mutmut(args.workdir, ["run", "--max-children", str(args.max_children), *names], log)
            if proc.returncode != 0:
                print(f"mutmut exited with {proc.returncode}; see {log}", file=sys.stderr)
        seconds = round(time.perf_counter() - t0, 1)
    result = report(args.workdir, args.modules, args.out, seconds)
    print_table(result)
    if args.markdown:
        print("\n" + markdown_table(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
