"""How well can an additive score rank a benchmark? A supervised reference for the EMQ search space.

Every formula mixq's EMQ search can express, like every hand-crafted proxy, scores a configuration
additively: ``score(b) = sum_l G[l, b_l]``. This script fits the best such table *with the labels*: a ridge
regression of top-1 on one-hot (layer, bit-width) features, on the study's train part (same split seed
and fractions as ``mixq emq study``), its ridge strength chosen on the validation part, and scores the
test part once, with a 95 % percentile-bootstrap interval. Where it ranks the test part better than the
best hand-crafted proxy, additivity itself does not stop a formula from doing so too. The fit is only a
lower bound on what an additive score can reach: it has one free value per (layer, bit-width) and a few
hundred labels, and the learning curve (the fit on 25 / 50 / 100 % of the train part) shows how much the
number of labelled configurations limits it.

``--references`` also scores a few fixed, hand-written formulas of the search space on the train and
validation parts (never test): which single source carries the ranking on which architecture.

    python benchmarks/emq_ceiling.py results/mqbench-resnet20-jpeg.sqlite results/mqbench-mobilenetv2-jpeg.sqlite \\
        results/mqbench-resnet18-jpeg.sqlite --study results/emq-study-joint/study.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mixq.bench import MQBench  # noqa: E402
from mixq.emq.genotype import Genotype  # noqa: E402
from mixq.emq.search import correlation  # noqa: E402
from mixq.emq.study import StudyConfig, load_bench, partition  # noqa: E402
from mixq.provenance import versions  # noqa: E402
from mixq.proxies.rank import bootstrap_interval  # noqa: E402

ALPHAS = tuple(10.0 ** k for k in range(-3, 4))

_ID2, _ID4 = ("identity",) * 2, ("identity",) * 4
REFERENCES = {
    "-sum_l ||D_b||^2 (EvoQ's sensitivity)": Genotype("linear", ("nerror",), (("square",) + _ID4[1:],), None,
                                                      "sum", "direct", -1),
    "-sum_l ||E_b||^2 (layer output MSE)": Genotype("linear", ("oerror",), (("square",) + _ID4[1:],), None,
                                                    "sum", "direct", -1),
    "-sum_l mean(H) ||Q_b||^2 (HAWQ-V3 from the Hessian diagonal)": Genotype(
        "tree", ("hessian", "qerror"), (("mean", "identity"), ("square", "identity")), "mul", "sum", "direct", -1),
    "-sum_l sum(H Q_b^2) (diagonal second-order Taylor)": Genotype(
        "tree", ("hessian", "qerror"), (_ID2, ("square", "identity")), "mul", "sum", "direct", -1),
    "-sum_l ||Q_b||^2 (weight quantization error)": Genotype("linear", ("qerror",), (("square",) + _ID4[1:],),
                                                             None, "sum", "direct", -1),
}


def references(paths: list[str], config: StudyConfig) -> list[dict[str, Any]]:
    """Train and validation Kendall of each :data:`REFERENCES` formula on each benchmark."""
    rows = []
    for path in paths:
        b = load_bench(path, config)
        for name, g in REFERENCES.items():
            taus = {}
            for part in ("train", "val"):
                s = b.formula_scores(g, part)
                taus[part] = correlation("kendall", s, b.acc[b.parts[part]]) if np.ptp(s) > 0 else float("nan")
            rows.append({"bench": path, "formula": name, **taus})
    return rows


def one_hot(bits: np.ndarray) -> np.ndarray:
    """``(n, L)`` bit-widths -> ``(n, sum_l |choices_l|)`` indicators of each layer's bit-width."""
    cols = []
    for layer in range(bits.shape[1]):
        for b in np.unique(bits[:, layer]):
            cols.append((bits[:, layer] == b).astype(np.float64))
    return np.stack(cols, axis=1)


def ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge weights and intercept (features and target centred; intercept not penalised)."""
    mx, my = x.mean(axis=0), y.mean()
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - my))
    return w, float(my - mx @ w)


def ceiling(bits: np.ndarray, acc: np.ndarray, config: StudyConfig, fraction: float = 1.0) -> dict[str, Any]:
    """The supervised additive fit of one benchmark: ridge strength on validation, Kendall on test.

    Args:
        bits: ``(n, L)`` configurations.
        acc: ``(n,)`` their top-1.
        config: the study settings (split seed and fractions).
        fraction: share of the train part used (its first entries in the seeded order).

    Returns:
        ``{"alpha", "val_kendall", "test_kendall", "test_ci", "n_train", "n_test"}``.
    """
    parts = partition(len(acc), config.fractions, config.split_seed)
    x = one_hot(bits)
    tr = parts["train"][: max(3, int(round(fraction * len(parts["train"]))))]
    val, test = parts["val"], parts["test"]
    best = None
    for alpha in ALPHAS:
        w, c = ridge(x[tr], acc[tr], alpha)
        tau = correlation("kendall", x[val] @ w + c, acc[val])
        if best is None or tau > best[1]:
            best = (alpha, tau, w, c)
    alpha, tau_val, w, c = best
    pred = x[test] @ w + c
    lo, hi = bootstrap_interval(pred, acc[test], "kendall", n_resamples=config.bootstrap,
                                confidence=config.confidence, seed=config.split_seed)
    return {"alpha": alpha, "val_kendall": tau_val, "test_kendall": correlation("kendall", pred, acc[test]),
            "test_ci": [lo, hi], "n_train": int(len(tr)), "n_test": int(len(test))}


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benches", nargs="+", help="benchmark files")
    p.add_argument("--study", help="a study.json scoring these benchmarks (for the best hand-crafted proxy)")
    p.add_argument("--references", action="store_true",
                   help="also score fixed single-source formulas on train / validation (computes the sources)")
    p.add_argument("--out", default=str(ROOT / "results" / "emq-ceiling.json"), help="result JSON")
    args = p.parse_args()
    config = StudyConfig()
    hand = {}
    if args.study:
        for b in json.loads(Path(args.study).read_text())["benches"]:
            best = b.get("best_handcrafted_on_val")
            if best and b["role"] != "fresh":
                hand[Path(b["path"]).name] = (best, b["handcrafted"][best]["kendall"])
    rows = []
    print("| benchmark | additive ridge fit, test Kendall [95 %] (train 25 % / 50 % / 100 %) | best hand-crafted "
          "(on val), test | fit - hand-crafted |")
    print("| --- | --- | --- | --- |")
    for path in args.benches:
        with MQBench.open(path, readonly=True) as bench:
            entries = bench.entries()
        bits = np.array([e.bits_tuple for e in entries])
        acc = np.array([e.top1 for e in entries], dtype=np.float64)
        curve = {f: ceiling(bits, acc, config, f) for f in (0.25, 0.5, 1.0)}
        full = curve[1.0]
        name, tau_hand = hand.get(Path(path).name, (None, float("nan")))
        rows.append({"bench": path, "curve": {str(k): v for k, v in curve.items()}, "best_handcrafted": name,
                     "handcrafted_test_kendall": tau_hand, "headroom": full["test_kendall"] - tau_hand})
        lo, hi = full["test_ci"]
        steps = " / ".join(f"{curve[f]['test_kendall']:.3f}" for f in (0.25, 0.5))
        print(f"| {Path(path).stem} | {full['test_kendall']:.3f} [{lo:.3f}, {hi:.3f}] ({steps} / "
              f"{full['test_kendall']:.3f}; n_train {curve[0.25]['n_train']}..{full['n_train']}) | "
              f"{name or '-'} {tau_hand:.3f} | {full['test_kendall'] - tau_hand:+.3f} |")
    refs = references(args.benches, config) if args.references else []
    if refs:
        names = [Path(b).stem.removeprefix("mqbench-") for b in args.benches]
        print("\n| formula (train / validation Kendall) | " + " | ".join(names) + " |")
        print("| --- |" + " --- |" * len(names))
        for f in REFERENCES:
            cells = [next(f"{r['train']:.3f} / {r['val']:.3f}" for r in refs if r["bench"] == b and r["formula"] == f)
                     for b in args.benches]
            print(f"| `{f}` | " + " | ".join(cells) + " |")
    Path(args.out).write_text(json.dumps({"split_seed": config.split_seed, "fractions": list(config.fractions),
                                          "alphas": list(ALPHAS), "rows": rows, "references": refs,
                                          "versions": versions()},
                                         indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
