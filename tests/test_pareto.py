"""Non-dominated sorting, crowding, thinning and the EvoQ Pareto search, against brute force."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from mixq.bits import BitConfig, Budget
from mixq.cli import main
from mixq.errors import MixqError
from mixq.evaluation.metrics import output_mse
from mixq.evoq.bitsearch import BitSpace, EvoQConfig
from mixq.evoq.evolution import EvolutionConfig
from mixq.evoq.pareto import ParetoEvolution, pareto_search, sweep_search
from mixq.evoq.sensitivity import compute_act_sensitivity, compute_sensitivity
from mixq.pareto import crowding_distance, nondominated_ranks, pareto_indices, thin
from mixq.quant.cost import CostModel


def _dominated_by(f: np.ndarray, i: int) -> list[int]:
    return [j for j in range(len(f)) if (f[j] <= f[i]).all() and (f[j] < f[i]).any()]


def _brute_ranks(f: np.ndarray) -> np.ndarray:
    """Peel fronts by the definition: rank r = non-dominated once ranks < r are removed."""
    ranks = np.full(len(f), -1)
    left = set(range(len(f)))
    r = 0
    while left:
        front = [i for i in left if not any(j in left for j in _dominated_by(f, i))]
        for i in front:
            ranks[i] = r
        left -= set(front)
        r += 1
    return ranks


@pytest.mark.parametrize("seed", range(5))
def test_ranks_match_peeling_fronts_by_the_definition(seed):
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 6, size=(40, 2)).astype(float)  # small integers: many ties and equal points
    assert (nondominated_ranks(f) == _brute_ranks(f)).all()
    f3 = rng.random((30, 3))
    assert (nondominated_ranks(f3) == _brute_ranks(f3)).all()


def test_pareto_indices_sorted_unique_and_non_dominated():
    f = np.array([[3, 1], [1, 3], [2, 2], [2, 2], [3, 3], [1, 4], [0.5, 5]], dtype=float)
    idx = pareto_indices(f)
    assert idx == [6, 1, 2, 0]  # by the first objective; the second [2, 2] is a repeat
    assert pareto_indices(np.zeros((0, 2))) == []
    with pytest.raises(MixqError, match="NaN"):
        pareto_indices([[np.nan, 1.0]])
    with pytest.raises(MixqError, match="matrix"):
        nondominated_ranks([1.0, 2.0])


def test_crowding_distance_by_hand():
    f = np.array([[0.0, 4.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0]])
    d = crowding_distance(f)
    # interior point 1: (3 - 0) / 4 + (4 - 1) / 4 = 1.5; point 2: (4 - 1) / 4 + (2 - 0) / 4 = 1.25
    assert np.isinf(d[0]) and np.isinf(d[3])
    assert d[1] == pytest.approx(1.5) and d[2] == pytest.approx(1.25)
    assert np.isinf(crowding_distance(f[:2])).all()


def test_thin_keeps_ends_and_spreads_points():
    costs = np.arange(100.0)
    kept = thin(costs, 5)
    assert len(kept) == 5 and all(abs(k - t) <= 0.5 for k, t in zip(kept, np.linspace(0, 99, 5)))
    assert thin(costs[:3], 5) == [0, 1, 2]
    # with scores, the steep part gets points too: a front falling fast on its first 10 costs
    scores = np.concatenate([np.linspace(100, 10, 10), np.linspace(9.9, 9, 90)])
    by_length = thin(costs, 5, scores)
    assert by_length[0] == 0 and by_length[-1] == 99
    assert sum(i < 10 for i in by_length) >= 2 > sum(i < 10 for i in thin(costs, 5))
    with pytest.raises(MixqError, match="at least 2"):
        thin(costs, 1)


def _hypervolume(points, ref) -> float:
    """Area dominated by 2-D (cost, error) points up to ``ref``, by sweeping the points by cost."""
    area, level = 0.0, ref[1]
    for c, f in sorted(points):
        if f < level:
            area += (ref[0] - c) * (level - f)
            level = f
    return area


def test_nsga_selection_recovers_a_known_front():
    """Toy additive problem (4 layers, 2..5 bits, 256 configurations) against the brute-force front."""
    params = np.array([10.0, 40.0, 20.0, 30.0])
    rng = np.random.default_rng(0)
    err = np.sort(rng.random((4, 4)) * params[:, None], axis=1)[:, ::-1]  # decreasing with bits

    def fitness(g):
        return float(sum(err[j, b - 2] for j, b in enumerate(g)))

    def cost(g):
        return float(np.dot(params, g))

    space = BitSpace([10, 40, 20, 30], Budget(avg_bits=8),
                     EvoQConfig(mutation="random", min_bits=2, max_bits=5, mutation_prob=0.3))
    search = ParetoEvolution(EvolutionConfig(population=16, sample=2, iterations=1000, seed=0), fitness, cost,
                             space.mutate, lambda r: [(2,) * 4, (5,) * 4])
    while not search.done:
        search.step()
    everything = list(itertools.product(range(2, 6), repeat=4))
    pts = [(cost(g), fitness(g)) for g in everything]
    true_front = {pts[i] for i in pareto_indices(pts)}
    archive = [(cost(g), f) for g, f in search.state.cache.items()]
    found = {archive[i] for i in pareto_indices(archive)}
    ref = (max(p[0] for p in pts) + 1, max(p[1] for p in pts) + 1)
    assert len(found & true_front) >= len(true_front) - 2  # 28 of 29 measured
    assert _hypervolume(found, ref) >= 0.995 * _hypervolume(true_front, ref)
    assert search.state.evaluations < len(everything)  # without evaluating everything
    assert len(search.state.population) == 16 and len(set(g for g, _ in search.state.population)) == 16


def _brute_mse(qm, x, ref, genome):
    qm.set_bits_tuple(genome)
    return output_mse(qm(x), ref)


def test_pareto_search_front_is_non_dominated_and_dominates_every_uniform_point(tiny):
    model, qm, x, ref = tiny
    cost = CostModel.from_model(qm, (3, 8, 8))
    table = compute_sensitivity(qm, x, progress=False)
    acts = compute_act_sensitivity(qm, x, bits=(4, 8), progress=False)
    cfg = EvoQConfig(population=12, iterations=150, min_bits=2, max_bits=4, act_choices=(4, 8), seed=3)
    r = pareto_search(qm, x, ref, cost, "bitops", cfg, sensitivity=table, act_sensitivity=acts, progress=False)
    f = np.array([[c, s] for _, s, c in r.front])
    assert (np.diff(f[:, 0]) > 0).all() and (np.diff(f[:, 1]) < 0).all()  # cheaper = worse, strictly
    for g, s, c in r.front:  # scores and costs are what they claim, by hand
        assert s == pytest.approx(_brute_mse(qm, x, ref, g), rel=1e-6)
        n = len(qm.layer_names)
        assert c == pytest.approx(sum(m * w * a for m, w, a in zip(cost.macs, g[:n], g[n:])))
    for w in (2, 3, 4):  # uniform configurations start the search, so the front is never worse
        for a in (4, 8):
            u = (w,) * 3 + (a,) * 3
            uc, us = cost.bitops(w, a), _brute_mse(qm, x, ref, u)
            assert any(c <= uc * (1 + 1e-12) and s <= us + 1e-12 for _, s, c in r.front)
    best = r.at(cost.bitops(3, 8))
    assert best is not None and best[2] <= cost.bitops(3, 8)
    assert all(s >= best[1] for _, s, c in r.front if c <= cost.bitops(3, 8))
    assert r.at(1.0) is None
    again = pareto_search(qm, x, ref, cost, "bitops", cfg, sensitivity=table, act_sensitivity=acts, progress=False)
    assert again.front == r.front  # same seed, same front


def test_pareto_search_resumes_to_the_uninterrupted_front(tiny, tmp_path):
    model, qm, x, ref = tiny
    cost = CostModel.from_model(qm, (3, 8, 8))
    table = compute_sensitivity(qm, x, progress=False)
    short = EvoQConfig(population=10, iterations=40, seed=1)
    full = EvoQConfig(population=10, iterations=90, seed=1)
    ck = tmp_path / "state.json"
    pareto_search(qm, x, ref, cost, "mb", short, sensitivity=table, checkpoint=ck, progress=False)
    resumed = pareto_search(qm, x, ref, cost, "mb", full, sensitivity=table, checkpoint=ck, progress=False)
    fresh = pareto_search(qm, x, ref, cost, "mb", full, sensitivity=table, progress=False)
    assert resumed.front == fresh.front and resumed.iterations == 90
    with pytest.raises(MixqError, match="pareto_cost"):
        pareto_search(qm, x, ref, cost, "bits", full, sensitivity=table, checkpoint=ck, progress=False)
    with pytest.raises(MixqError, match="cost must be one of"):
        pareto_search(qm, x, ref, cost, "joules", full, sensitivity=table, progress=False)


def test_sweep_search_meets_every_budget_shares_one_cache_and_resumes(tiny, tmp_path):
    model, qm, x, ref = tiny
    cost = CostModel.from_model(qm, (3, 8, 8))
    table = compute_sensitivity(qm, x, progress=False)
    budgets = [2.5, 4.0, 3.0]
    cfg = EvoQConfig(population=8, iterations=90, seed=0)
    r = sweep_search(qm, x, ref, cost, "bits", budgets, cfg, sensitivity=table, checkpoint_dir=tmp_path,
                     progress=False)
    assert r.settings["budgets"] == [4.0, 3.0, 2.5] and r.iterations == 90
    assert sorted(p.name for p in tmp_path.glob("sweep_state_*.json")) == [f"sweep_state_{k}.json" for k in range(3)]
    for b in budgets:
        g, s, c = r.at(b)
        assert c <= b and s == pytest.approx(_brute_mse(qm, x, ref, g), rel=1e-6)
        # no evaluated configuration within the budget is better (the archive is complete)
        assert s <= min(f for g2, f, c2 in r.front if c2 <= b)
    assert len(r.front) <= r.evaluations <= r.iterations + 8  # one cache: no genome evaluated twice across stages
    again = sweep_search(qm, x, ref, cost, "bits", budgets, cfg, sensitivity=table, checkpoint_dir=tmp_path,
                         progress=False)
    assert again.front == r.front and again.evaluations == r.evaluations
    assert again.layer_passes["computed"] == 0  # every stage resumed finished: nothing evaluated again
    fresh = sweep_search(qm, x, ref, cost, "bits", budgets, cfg, sensitivity=table, progress=False)
    assert fresh.front == r.front
    capped = sweep_search(qm, x, ref, cost, "bits", [4.0], cfg, sensitivity=table, cap=Budget(bitops=cost.bitops(3)),
                          progress=False)
    assert all(c2 <= 4.0 for _, _, c2 in capped.front)
    assert cost.bitops(list(capped.at(4.0)[0])) <= cost.bitops(3)
    with pytest.raises(MixqError, match="infeasible"):
        sweep_search(qm, x, ref, cost, "bits", [1.5], cfg, sensitivity=table, progress=False)


def test_cli_pareto_writes_front_plot_and_configs(demo_only, tmp_path, capsys):
    out = tmp_path / "p"
    argv = ["evoq", "--pareto", "bitops", "--act-choices", "4", "8", "--iterations", "40", "--population", "8",
            "--samples", "16", "--n-test", "100", "--front-points", "4", "--at", "0.8G", "--no-progress",
            "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "front" in text and "uniform W4A4" in text and "FP32" in text
    r = json.loads((out / "pareto.json").read_text())
    assert {"pareto.png", "report.md", "sweep_state_0.json", "sensitivity.json", "act_sensitivity.json"} <= {
        p.name for p in out.iterdir()}
    assert r["method"] == "evoq" and r["cost"] == "bitops" and r["n_test"] == 100 and r["seed"] == 0
    assert 2 <= len(r["front"]) <= 5 and len(r["uniform"]) == 4 * 2
    assert r["targets"][0]["budget"] == 0.8e9
    costs = [p["bitops"] for p in r["front"]]
    assert costs == sorted(costs)
    names = r["layers"]
    cm = CostModel(tuple(names), tuple(r["params"]), tuple(r["macs"]), 8)
    for p in r["front"]:
        cfg = BitConfig.load(out / p["config"])
        assert cm.of_config(cfg)["bitops"] == pytest.approx(p["bitops"])
        assert set(cfg.acts.values()) <= {4, 8}
        assert 0 <= p["top1"] <= 100
    at = r["front"][[p["front_index"] for p in r["front"]].index(r["targets"][0]["index"])]
    assert at["bitops"] <= 0.8e9
    assert set(r["seconds"]) == {"sensitivity", "search", "evaluation", "total"} and r["versions"]["torch"]
