"""Tables and a plot of every EMQ study under results/ (no computation: reads ``study.json`` files).

One row per (study, benchmark): the part scored (test part of a searched or transfer benchmark, the whole
of a fresh one), the chosen formula's Kendall tau with its 95 % bootstrap interval, the spread over the
evolution seeds, the best hand-crafted proxy *chosen on that model's validation part* with its tau, and the
paired gain with its interval. A gain whose interval contains 0 is marked "no demonstrated gain".

    python benchmarks/emq_studies.py                      # print the table
    python benchmarks/emq_studies.py --readme README.md   # also splice it between <!-- emq-studies --> markers
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mixq.reports.plots import pyplot  # noqa: E402

MARK = "emq-studies"


def _short(path: str) -> str:
    """``results/mqbench-resnet20-jpeg-fresh1.sqlite`` -> ``resnet20-jpeg-fresh1``."""
    return Path(path).stem.removeprefix("mqbench-")


def _ci(rec: dict[str, Any], key: str = "kendall", ci: str = "kendall_ci", signed: bool = False) -> str:
    if not rec or key not in rec:
        return rec.get("error", "-") if rec else "-"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    v = fmt.format(rec[key])
    if rec.get(ci) is None:
        return f"{v} [undefined]"
    lo, hi = rec[ci]
    return f"{v} [{fmt.format(lo)}, {fmt.format(hi)}]"


def study_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one ``study.json``.

    Args:
        path: the file.

    Returns:
        One dict per benchmark of the study.
    """
    rec = json.loads(path.read_text())
    searched = "+".join(_short(p).removesuffix("-jpeg") for p in rec["search_benches"])
    reduce = rec["config"]["reduce"] if len(rec["search_benches"]) > 1 else ""
    rows = []
    for b in rec["benches"]:
        chosen = b["evolved"]["chosen"]
        best = b.get("best_handcrafted_on_val")
        spread = b.get("evolved_kendall_over_seeds") or {}
        gain = chosen.get("gain_over_best_handcrafted")
        gci = chosen.get("gain_ci")
        verdict = "" if gain is None else ("gain" if gci and gci[0] > 0 else
                                            ("loss" if gci and gci[1] < 0 else "no demonstrated gain"))
        rows.append({
            "study": path.parent.name, "searched_on": searched, "reduce": reduce, "formula": rec["formula"],
            "objective": rec["config"].get("objective", "kendall"),
            "chosen_seed": rec["chosen_seed"], "bench": _short(b["path"]), "role": b["role"],
            "part": b["scored_part"], "n": int(b["parts"].get(b["scored_part"], b["entries"])),
            "evolved": chosen, "seeds": spread, "best_handcrafted": best,
            "handcrafted": b["handcrafted"].get(best) if best else None, "gain": gain, "gain_ci": gci,
            "verdict": verdict,
        })
    return rows


def _rank(study: str) -> tuple[int, str]:
    """Order of the studies in the table: joint, leave-one-out, per architecture; Kendall before gain."""
    name = study.removeprefix("emq-study-")
    for k, prefix in enumerate(("joint", "gain-joint", "loao-", "gain-loao-")):
        if name == prefix or (prefix.endswith("-") and name.startswith(prefix)):
            return k, name
    return (9, name) if name.startswith("joint") else (5, name)


def _benches(rows: list[dict[str, Any]]) -> list[str]:
    """The benchmarks of the rows: ResNet-20, MobileNetV2, ResNet-18 (others after), fresh ones last."""
    arch = ("resnet20", "mobilenetv2", "resnet18")
    return sorted({r["bench"] for r in rows},
                  key=lambda b: (b.count("fresh"), next((k for k, a in enumerate(arch) if b.startswith(a)), 9), b))


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown matrix: one row per study, one column per benchmark (test part, or fresh in full).

    Each cell: the chosen formula's Kendall, then its gain over the best hand-crafted proxy (chosen on that
    model's validation part) with the 95 % interval; ``S`` = searched, ``T`` = transfer (never searched),
    ``F`` = fresh benchmark. A bold gain has an interval above 0.
    """
    benches = _benches(rows)
    studies = sorted({r["study"] for r in rows}, key=_rank)
    cell = {(r["study"], r["bench"]): r for r in rows}
    head = []
    for b in benches:
        any_row = next(r for r in rows if r["bench"] == b)
        head.append(f"{b} ({'all' if any_row['role'] == 'fresh' else 'test'}, n={any_row['n']})")
    out = ["| study: searched on (reduce, objective) | " + " | ".join(head) + " |",
           "| --- |" + " --- |" * len(benches)]
    for st in studies:
        first = next(r for r in rows if r["study"] == st)
        label = f"`{st.removeprefix('emq-study-')}`: {first['searched_on']}"
        if first["reduce"] or first["objective"] != "kendall":
            label += f" ({', '.join(x for x in (first['reduce'], first['objective']) if x)})"
        cells = []
        for b in benches:
            r = cell.get((st, b))
            if r is None:
                cells.append("")
                continue
            tag = {"search": "S", "transfer": "T", "fresh": "F"}[r["role"]]
            e = r["evolved"]
            if "kendall" not in e:
                cells.append(f"{tag} {e.get('error', '-')}")
                continue
            g = _ci(e, "gain_over_best_handcrafted", "gain_ci", signed=True)
            if r["verdict"] == "gain":
                g = f"**{g}**"
            cells.append(f"{tag} {e['kendall']:.3f}, {g}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    hand = []
    for b in benches:
        r = next((r for r in rows if r["bench"] == b and r["handcrafted"] and "kendall" in r["handcrafted"]), None)
        hand.append(f"{r['best_handcrafted']} {_ci(r['handcrafted'])}" if r else "-")
    out.append("| best hand-crafted (chosen on validation), Kendall [95 %] | " + " | ".join(hand) + " |")
    return "\n".join(out)


def formulas(paths: list[Path]) -> str:
    """The chosen formula of each study, as a bullet list."""
    out = []
    for p in sorted(paths, key=lambda q: _rank(q.parent.name)):
        rec = json.loads(p.read_text())
        out.append(f"- `{p.parent.name}` (seed {rec['chosen_seed']}): `{rec['formula']}`")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Kendall tau with intervals per benchmark: each study's formula against the best hand-crafted proxy."""
    plt = pyplot()
    benches = _benches(rows)
    fig, axes = plt.subplots(1, len(benches), figsize=(4.2 * len(benches), 0.45 * (1 + len(rows) / len(benches))
                                                       + 2.2), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        mine = [r for r in rows if r["bench"] == bench and "kendall" in r["evolved"]]
        labels, vals, los, his, colours = [], [], [], [], []
        hand = next((r for r in mine if r["handcrafted"] and "kendall" in r["handcrafted"]), None)
        entries = [(f"{r['study'].removeprefix('emq-study-')} ({r['role'][0].upper()})", r["evolved"],
                    "tab:blue" if r["role"] == "search" else "tab:orange") for r in mine]
        if hand:
            entries.append((f"{hand['best_handcrafted']} (hand-crafted)", hand["handcrafted"], "tab:gray"))
        for label, rec, colour in entries:
            ci = rec.get("kendall_ci") or [rec["kendall"]] * 2
            labels.append(label)
            vals.append(rec["kendall"])
            los.append(rec["kendall"] - ci[0])
            his.append(ci[1] - rec["kendall"])
            colours.append(colour)
        y = range(len(labels))
        ax.barh(y, vals, xerr=[los, his], color=colours, capsize=3)
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        if hand:
            ax.axvline(hand["handcrafted"]["kendall"], color="tab:gray", ls="--", lw=1)
        ax.set_xlabel("Kendall tau (95 % bootstrap)")
        ax.set_title(bench, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("EMQ studies: each study's formula (S searched, T transfer, F fresh) vs the best hand-crafted "
                 "proxy chosen on validation (grey, dashed)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def splice(readme: Path, text: str) -> None:
    """Replace the text between ``<!-- emq-studies -->`` and ``<!-- /emq-studies -->`` in ``readme``."""
    src = readme.read_text()
    pat = re.compile(rf"(<!-- {MARK} -->\n).*?(<!-- /{MARK} -->)", re.S)
    if not pat.search(src):
        raise SystemExit(f"{readme}: no <!-- {MARK} --> ... <!-- /{MARK} --> markers")
    readme.write_text(pat.sub(lambda m: m.group(1) + text + "\n" + m.group(2), src))


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(ROOT / "results"), help="folder holding emq-study-*/study.json")
    p.add_argument("--readme", help="README to splice the table into")
    p.add_argument("--json", default=None, help="summary JSON (default RESULTS/emq-studies.json)")
    p.add_argument("--plot", default=None, help="plot file (default RESULTS/emq-studies.png)")
    args = p.parse_args()
    res = Path(args.results)
    paths = sorted(res.glob("emq-study-*/study.json"))
    if not paths:
        raise SystemExit(f"no emq-study-*/study.json under {res}")
    rows = [r for path in paths for r in study_rows(path)]
    order = {"search": 0, "transfer": 1, "fresh": 2}
    rows.sort(key=lambda r: (_rank(r["study"]), order[r["role"]], r["bench"]))
    text = table(rows) + "\n\nChosen formulas:\n\n" + formulas(paths)
    print(text)
    (Path(args.json) if args.json else res / "emq-studies.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, Path(args.plot) if args.plot else res / "emq-studies.png")
    if args.readme:
        splice(Path(args.readme), text)


if __name__ == "__main__":
    main()
