"""The leak-free EMQ study: three-way split, multi-benchmark fitness, validation choices, bootstrap intervals."""

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from mixq.cli import main
from mixq.emq.genotype import Genotype
from mixq.emq.search import EMQConfig
from mixq.emq.study import MultiFitness, StudyConfig, formula_size, load_bench, partition, run_study
from mixq.errors import MixqError
from mixq.proxies import get_proxy
from mixq.proxies.base import stats_for
from mixq.proxies.rank import bootstrap_interval


def test_partition_is_a_seeded_disjoint_cover():
    parts = partition(40, (0.5, 0.25, 0.25), seed=3)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [20, 10, 10]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(40))
    again = partition(40, (0.5, 0.25, 0.25), seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not np.array_equal(parts["test"], partition(40, (0.5, 0.25, 0.25), seed=4)["test"])
    with pytest.raises(MixqError, match=r"too small .*'test': 2"):
        partition(10, (0.6, 0.2, 0.2), seed=0)


@pytest.mark.parametrize("bad, match", [
    ({"fractions": (0.5, 0.5, 0.1)}, "summing to 1"), ({"fractions": (1.0, 0.0, 0.0)}, "positive"),
    ({"seeds": (1, 1)}, "distinct"), ({"seeds": ()}, "at least one"), ({"reduce": "max"}, "reduce"),
    ({"size_penalty": -1}, "penalty"), ({"finalists": 0}, "finalists"), ({"bootstrap": 10}, "resamples")])
def test_study_config_is_validated(bad, match):
    with pytest.raises(MixqError, match=match):
        StudyConfig(**bad)


def test_formula_size_counts_the_canonical_operations():
    g = Genotype("tree", ("hessian", "qerror"), (("abs", "identity"), ("square", "square")), "mul", "sum", "bits", -1)
    assert formula_size(g) == 2 + 3 + 1  # inputs, abs + square + square (square is not idempotent), binary
    lin = Genotype("linear", ("qerror",), (("identity", "abs", "abs", "identity"),), None, "sum", "bits", 1)
    assert formula_size(lin) == 1 + 1  # one input, abs once (repeated idempotent abs dropped)


class _Part:
    def __init__(self, fit, reason=None):
        self.fit, self.reason = fit, reason

    def assess(self, g):
        return (float("-inf"), self.reason, None) if self.reason else (self.fit, None, np.array([[self.fit, 1.0]]))


class _Bench:
    def __init__(self, part):
        self.part = part

    def fitness(self, part, metric="kendall", stability=0.0):
        assert part == "train"  # the search never sees validation or test
        return self.part


def test_multi_fitness_reduces_the_benchmarks_and_penalises_size():
    g = Genotype("linear", ("qerror",), (("abs", "identity", "identity", "identity"),), None, "sum", "bits", 1)
    benches = [_Bench(_Part(0.6)), _Bench(_Part(0.2)), _Bench(_Part(0.4))]
    f, reason, fp = MultiFitness(benches, "min", 0.01).assess(g)
    assert reason is None and f == pytest.approx(0.2 - 0.01 * 2) and fp.shape == (6,)
    assert MultiFitness(benches, "mean", 0.0).assess(g)[0] == pytest.approx(0.4)
    # a formula screened out on any benchmark is screened out
    f, reason, _ = MultiFitness([benches[0], _Bench(_Part(0, "nonfinite"))], "mean").assess(g)
    assert reason == "nonfinite" and f == float("-inf")
    # the gain objective: each benchmark's offset (its best hand-crafted Kendall) comes off before the reduction
    f, _, _ = MultiFitness(benches, "min", 0.0, offsets=[0.5, 0.0, 0.1]).assess(g)
    assert f == pytest.approx(min(0.6 - 0.5, 0.2 - 0.0, 0.4 - 0.1))
    with pytest.raises(MixqError, match="2 offsets for 3"):
        MultiFitness(benches, offsets=[0.1, 0.2])


def test_bootstrap_interval_against_a_brute_force_percentile_bootstrap():
    rng = np.random.default_rng(0)
    acc = rng.normal(size=60)
    scores, other = acc + rng.normal(size=60), acc + 2 * rng.normal(size=60)
    lo, hi = bootstrap_interval(scores, acc, n_resamples=3000, seed=1)
    tau = stats.kendalltau(scores, acc)[0]
    assert lo < tau < hi
    draws = rng.integers(0, 60, size=(3000, 60))
    brute = [stats.kendalltau(scores[i], acc[i])[0] for i in draws]
    ref_lo, ref_hi = np.percentile(brute, [2.5, 97.5])
    assert abs(lo - ref_lo) < 0.03 and abs(hi - ref_hi) < 0.03  # Monte-Carlo error at 3000 resamples
    assert bootstrap_interval(scores, acc, n_resamples=3000, seed=1) == (lo, hi)  # seeded
    assert bootstrap_interval(scores, acc, baseline=scores, n_resamples=200) == (0.0, 0.0)
    dlo, dhi = bootstrap_interval(scores, acc, baseline=other, n_resamples=3000, seed=1)
    diff = tau - stats.kendalltau(other, acc)[0]
    assert dlo < diff < dhi and dhi - dlo < (hi - lo) * 2.5
    with pytest.raises(MixqError, match="metric"):
        bootstrap_interval(scores, acc, metric="pearson")
    with pytest.raises(MixqError, match="equal-length"):
        bootstrap_interval(scores[:5], acc)
    with pytest.raises(MixqError, match="finite"):
        bootstrap_interval(np.r_[scores[:-1], np.nan], acc)


# -- end to end on the embedded demo ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def benches(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("study")
    old = {k: os.environ.pop(k, None) for k in ("MIXQ_DATA", "MIXQ_MODELS")}
    try:
        for seed, n in ((0, 16), (1, 16), (2, 10)):
            assert main(["bench", "build", str(root / f"b{seed}.sqlite"), "-n", str(n), "--n-test", "30",
                         "--samples", "8", "--seed", str(seed), "--no-progress"]) == 0
    finally:
        for k, v in old.items():
            if v is not None:
                os.environ[k] = v
    return root


CONFIG = StudyConfig(seeds=(0, 1), finalists=4, bootstrap=200,
                     search=EMQConfig(candidates=60, population=8, proxy_batch=16, hessian_samples=2))


def test_study_end_to_end_chooses_on_validation_and_never_on_test(demo_only, benches, tmp_path):
    b0, b1, b2 = (str(benches / f"b{s}.sqlite") for s in range(3))
    loaded = [load_bench(b0, CONFIG), load_bench(b1, CONFIG)]
    r = run_study([b0], tmp_path / "s", CONFIG, transfer=[b1], fresh=[b2], baselines=["bparams", "snip"],
                  progress=False, loaded=loaded)
    assert (tmp_path / "s" / "study.json").is_file() and "Kendall tau" in (tmp_path / "s" / "report.md").read_text()
    assert [s["seed"] for s in r["seeds"]] == [0, 1]
    best = max(r["seeds"], key=lambda s: (s["val_score"], s["train_fitness"]))
    assert r["chosen_seed"] == best["seed"] and r["formula"] == best["formula"]
    assert Genotype.load(tmp_path / "s" / "genotype.json").to_dict() == r["genotype"]  # what allocate reads
    for s in r["seeds"]:  # each seed's formula is its finalists' best on validation
        assert s["val_score"] == max(f["val_score"] for f in s["finalists"])
    roles = {b["role"]: b for b in r["benches"]}
    assert roles["search"]["parts"] == {"train": 8, "val": 4, "test": 4}
    assert roles["fresh"]["scored_part"] == "all" and roles["fresh"]["parts"] == {"all": 10}
    # the reported test Kendall is that of the chosen formula on the test configurations (by hand)
    g = Genotype.from_dict(r["genotype"])
    bench = loaded[0]
    idx = bench.parts["test"]
    tau = stats.kendalltau(bench.formula_scores(g, "test"), bench.acc[idx])[0]
    assert roles["search"]["evolved"]["chosen"]["kendall"] == pytest.approx(tau)
    # no leak: scrambling the test labels changes no choice, only the test figures
    scrambled = load_bench(b0, CONFIG, like=bench)
    scrambled.acc = scrambled.acc.copy()
    scrambled.acc[idx] = scrambled.acc[idx][::-1] + 50.0
    r2 = run_study([b0], tmp_path / "s2", CONFIG, transfer=[b1], baselines=["bparams", "snip"], progress=False,
                   loaded=[scrambled, loaded[1]])
    assert r2["formula"] == r["formula"] and [s["formula"] for s in r2["seeds"]] == [s["formula"] for s in r["seeds"]]
    assert r2["benches"][0]["best_handcrafted_on_val"] == roles["search"]["best_handcrafted_on_val"]
    # a rerun resumes every seed's search and writes the same record
    again = run_study([b0], tmp_path / "s", CONFIG, transfer=[b1], fresh=[b2], baselines=["bparams", "snip"],
                      progress=False, loaded=loaded)
    timeless = [{k: v for k, v in s.items() if k != "search_seconds"} for s in r["seeds"]]
    assert [{k: v for k, v in s.items() if k != "search_seconds"} for s in again["seeds"]] == timeless
    assert again["benches"] == r["benches"]


def test_gain_objective_scores_each_benchmark_against_its_best_handcrafted_proxy(demo_only, benches, tmp_path):
    b0, b1 = (str(benches / f"b{s}.sqlite") for s in range(2))
    config = replace(CONFIG, objective="gain", seeds=(0,))
    loaded = [load_bench(b0, config), load_bench(b1, config)]
    names = ["bparams", "snip"]
    r = run_study([b0, b1], tmp_path / "g", config, baselines=names, progress=False, loaded=loaded)
    assert r["config"]["objective"] == "gain"
    g = Genotype.from_dict(r["seeds"][0]["genotype"])
    for bench in loaded:  # validation values are gains over the best hand-crafted Kendall on validation (by hand)
        idx = bench.parts["val"]
        hand = []
        for name in names:
            proxy = get_proxy(name)
            st = stats_for(bench.qm, proxy, bench.x, bench.y if proxy.needs_labels else None, seed=config.split_seed)
            sc = proxy.score(st, bench.bits)[idx]
            hand.append(stats.kendalltau(sc, bench.acc[idx])[0] if np.ptp(sc) > 0 else -np.inf)
        tau = stats.kendalltau(bench.formula_scores(g, "val"), bench.acc[idx])[0]
        assert r["seeds"][0]["val"][bench.path] == pytest.approx(tau - max(hand))
    assert r["seeds"][0]["val_score"] == pytest.approx(min(r["seeds"][0]["val"].values()))
    # a Kendall-objective study in the same folder would mix checkpoints: the signature tells them apart
    with pytest.raises(MixqError, match="objective"):
        run_study([b0, b1], tmp_path / "g", replace(config, objective="kendall"), baselines=names, progress=False,
                  loaded=loaded)


def test_study_cli(demo_only, benches, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["emq", "study", "--bench", str(benches / "b0.sqlite"), str(benches / "b1.sqlite"), "--out", str(out),
            "--seeds", "0", "--finalists", "3", "--bootstrap", "200", "--candidates", "50", "--population", "8",
            "--proxy-batch", "16", "--hessian-samples", "2", "--baselines", "bparams", "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "chosen formula" in text and "evolved (chosen)" in text
    r = json.loads((out / "study.json").read_text())
    assert len(r["search_benches"]) == 2 and r["config"]["reduce"] == "min"
    assert main([*argv[:-1], "--fractions", "0.5", "0.5", "0.5"]) == 2
    assert "summing to 1" in capsys.readouterr().err
