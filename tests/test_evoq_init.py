"""EvoQ's ILP start (init="ilp"): the additive optimum by brute force, its place in the first population,
unchanged signatures for the paper's start, and where it is refused."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import TinyNet

from mixq.bits import Budget
from mixq.cli.app import build_parser
from mixq.errors import MixqError
from mixq.evaluation.metrics import output_mse
from mixq.evoq.bitsearch import BitSpace, EvoQConfig, evoq_search, search_signature
from mixq.evoq.pareto import pareto_search, sweep_search
from mixq.evoq.sensitivity import compute_act_sensitivity, compute_sensitivity
from mixq.quant.cost import CostModel

PARAMS, MACS = TinyNet.PARAMS, TinyNet.MACS


@pytest.fixture(scope="module")
def tables(tiny):
    _, qm, x, _ = tiny
    return compute_sensitivity(qm, x, progress=False), compute_act_sensitivity(qm, x, bits=(4, 6, 8), progress=False)


def _brute(cost_of, feasible, space_iter):
    best = min((g for g in space_iter if feasible(g)), key=cost_of)
    return best, cost_of(best)


@pytest.mark.parametrize("budget", [Budget(avg_bits=3.0), Budget(avg_bits=4.5), Budget(size_mb=2e-4)])
def test_ilp_start_is_the_additive_optimum_by_brute_force(tables, budget):
    table, _ = tables
    space = BitSpace(PARAMS, budget, EvoQConfig(), table)
    limit = budget.max_bit_params(sum(PARAMS))

    def total(g):
        return sum(table.value(j, b) for j, b in enumerate(g))

    best, best_cost = _brute(total, lambda g: np.dot(PARAMS, g) <= limit * (1 + 1e-12),
                             itertools.product(range(2, 9), repeat=3))
    got = space.ilp_start()
    assert space.feasible(got)
    assert total(got) == pytest.approx(best_cost, rel=1e-9)


def test_ilp_start_with_activation_genes_under_a_bitops_budget(tables, tiny):
    table, acts = tables
    _, qm, _, _ = tiny
    cm = CostModel.from_model(qm, (3, 8, 8))
    budget = Budget(bitops=cm.bitops(3, 6))
    space = BitSpace(PARAMS, budget, EvoQConfig(act_choices=(4, 6, 8)), table, MACS, acts)

    def total(g):
        w, a = g[:3], g[3:]
        return sum(table.value(j, b) for j, b in enumerate(w)) + sum(acts.value(j, b) for j, b in enumerate(a))

    genomes = (w + a for w in itertools.product(range(2, 9), repeat=3) for a in itertools.product((4, 6, 8), repeat=3))
    best, best_cost = _brute(total, lambda g: cm.bitops(list(g[:3]), list(g[3:])) <= budget.bitops * (1 + 1e-12),
                             genomes)
    got = space.ilp_start()
    assert space.feasible(got) and total(got) == pytest.approx(best_cost, rel=1e-9)


def test_first_population_is_built_around_the_ilp_start(tables, tiny):
    _, qm, x, ref = tiny
    table, _ = tables
    budget = Budget(avg_bits=3.0)
    space = BitSpace(PARAMS, budget, EvoQConfig(), table)
    start = space.ilp_start()
    pop = space.initial(3, np.random.default_rng(0), 8, start)
    assert pop[0] == start and len(pop) == 8 and all(space.feasible(g) for g in pop)
    assert space.initial(3, np.random.default_rng(0), 8)[0] == (3, 3, 3)  # the paper's uniform start
    res = evoq_search(qm, x, ref, budget, EvoQConfig(init="ilp", iterations=4, population=4, sample=2), table,
                      progress=False)
    qm.set_bits_tuple(start)
    start_fit = output_mse(qm(x), ref)
    assert res.best_history[0] <= start_fit + 1e-12  # the start was evaluated in the first population


def test_paper_start_keeps_old_signatures_and_ilp_start_is_part_of_them():
    plain = search_signature(["a"], 10.0, EvoQConfig())
    assert "init" not in plain["settings"]
    assert search_signature(["a"], 10.0, EvoQConfig(init="ilp"))["settings"]["init"] == "ilp"


def test_bad_init_and_missing_tables_are_refused(tables):
    with pytest.raises(MixqError, match=r"init must be one of \('uniform', 'ilp'\), got 'best'"):
        EvoQConfig(init="best")
    space = BitSpace(PARAMS, Budget(avg_bits=3.0), EvoQConfig(mutation="random"))
    with pytest.raises(MixqError, match="init='ilp' needs the sensitivity table"):
        space.ilp_start()
    table, _ = tables
    space = BitSpace(PARAMS, Budget(avg_bits=3.0), EvoQConfig(mutation="random", act_choices=(4, 8)), table,
                     macs=MACS)
    with pytest.raises(MixqError, match="needs the sensitivity table and the activation table"):
        space.ilp_start()


def test_front_searches_with_the_ilp_start(tables, tiny):
    _, qm, x, ref = tiny
    table, _ = tables
    cm = CostModel.from_model(qm, (3, 8, 8))
    with pytest.raises(MixqError, match="NSGA-II front search starts from the uniform points"):
        pareto_search(qm, x, ref, cm, "bits", EvoQConfig(init="ilp", iterations=4, population=4, sample=2),
                      sensitivity=table, progress=False)
    res = sweep_search(qm, x, ref, cm, "bits", [3.0, 5.0],
                       EvoQConfig(init="ilp", iterations=8, population=4, sample=2), sensitivity=table,
                       progress=False)
    assert len(res.front) >= 1


def test_cli_takes_init():
    args = build_parser().parse_args(["evoq", "--init", "ilp"])
    assert args.init == "ilp"
    assert build_parser().parse_args(["evoq"]).init == "uniform"
