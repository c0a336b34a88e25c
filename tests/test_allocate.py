"""ILP bit allocation: exact optimality against brute force, budgets, errors, and the model wrapper."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from mixq.allocate.ilp import (
    AllocationResult,
    allocate_bits,
    allocate_config,
    bitops,
    layer_macs,
    uniform_bitops,
)
from mixq.bits import BitConfig, Budget
from mixq.errors import MixqError
from mixq.quant.model import QuantModel


def brute_force(cost, choices, params, budget=None, macs=None, max_bitops=None, act_bits=8, fixed=None):
    """Best objective over every combination (None if nothing fits)."""
    cost = np.asarray(cost)
    n_layers, k = cost.shape
    combos = np.array(list(itertools.product(range(k), repeat=n_layers)))
    bits = np.asarray(choices)[combos]
    ok = np.ones(len(combos), dtype=bool)
    for layer, b in (fixed or {}).items():
        ok &= bits[:, layer] == b
    if budget is not None:
        ok &= bits @ np.asarray(params, dtype=float) <= budget * (1 + 1e-12)
    if max_bitops is not None:
        ok &= (bits @ np.asarray(macs, dtype=float)) * act_bits <= max_bitops * (1 + 1e-12)
    if not ok.any():
        return None
    totals = cost[np.arange(n_layers), combos].sum(axis=1)
    return float(totals[ok].min())


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    n_layers = int(rng.integers(4, 7))
    choices = sorted(rng.choice(np.arange(2, 9), size=int(rng.integers(3, 5)), replace=False).tolist())
    params = rng.integers(10, 5000, size=n_layers)
    macs = rng.integers(1000, 10**6, size=n_layers)
    # decreasing cost in bits, as for quantization error, plus noise so ties are unlikely
    base = rng.exponential(1.0, size=(n_layers, 1)) * 2.0 ** (-np.asarray(choices, dtype=float))[None, :]
    cost = base * rng.uniform(0.5, 1.5, size=base.shape)
    return rng, choices, params, macs, cost


def between(rng, lo: float, hi: float) -> float:
    return float(lo + rng.uniform(0.05, 0.95) * (hi - lo))


def check(res: AllocationResult, expected: float | None, cost, choices, params, budget=None, macs=None,
          max_bitops=None, act_bits=8, fixed=None):
    assert expected is not None
    assert res.objective == pytest.approx(expected, rel=1e-9, abs=1e-15)
    idx = [choices.index(b) for b in res.bits]
    assert res.objective == pytest.approx(float(np.asarray(cost)[np.arange(len(idx)), idx].sum()), rel=1e-12)
    assert res.bit_params == float(np.dot(params, res.bits))
    if budget is not None:
        assert res.bit_params <= budget * (1 + 1e-12)
    if max_bitops is not None:
        assert res.bitops is not None and res.bitops <= max_bitops * (1 + 1e-12)
    for layer, b in (fixed or {}).items():
        assert res.bits[layer] == b
    assert res.status == "optimal"
    assert res.seconds >= 0


@pytest.mark.parametrize("seed", range(8))
def test_size_budget_matches_brute_force(seed):
    rng, choices, params, _, cost = random_case(seed)
    lo, hi = min(choices) * params.sum(), max(choices) * params.sum()
    budget = between(rng, lo, hi)
    res = allocate_bits(cost, choices, params, budget)
    check(res, brute_force(cost, choices, params, budget), cost, choices, params, budget)


@pytest.mark.parametrize("seed", range(8))
def test_size_and_bitops_budgets_match_brute_force(seed):
    rng, choices, params, macs, cost = random_case(100 + seed)
    budget = between(rng, min(choices) * params.sum(), max(choices) * params.sum())
    act = 8
    max_ops = between(rng, min(choices) * macs.sum() * act, max(choices) * macs.sum() * act)
    res = allocate_bits(cost, choices, params, budget, macs=macs, max_bitops=max_ops, act_bits=act)
    expected = brute_force(cost, choices, params, budget, macs, max_ops, act)
    check(res, expected, cost, choices, params, budget, macs, max_ops, act)
    assert res.bitops == float(np.dot(macs, res.bits)) * act
    # the BitOps bound alone
    res2 = allocate_bits(cost, choices, params, None, macs=macs, max_bitops=max_ops, act_bits=act)
    check(res2, brute_force(cost, choices, params, None, macs, max_ops, act), cost, choices, params,
          None, macs, max_ops, act)


@pytest.mark.parametrize("seed", range(6))
def test_fixed_layers_match_brute_force(seed):
    rng, choices, params, macs, cost = random_case(200 + seed)
    n_layers = len(params)
    fixed = {0: max(choices), n_layers - 1: max(choices)}
    floor = sum(params[i] * b for i, b in fixed.items()) + min(choices) * params[1:-1].sum()
    budget = between(rng, floor, max(choices) * params.sum())
    max_ops = between(rng, (sum(macs[i] * b for i, b in fixed.items()) + min(choices) * macs[1:-1].sum()) * 4,
                      max(choices) * macs.sum() * 4)
    res = allocate_bits(cost, choices, params, budget, macs=macs, max_bitops=max_ops, act_bits=4, fixed=fixed)
    expected = brute_force(cost, choices, params, budget, macs, max_ops, 4, fixed)
    check(res, expected, cost, choices, params, budget, macs, max_ops, 4, fixed)


@pytest.mark.parametrize("seed", range(4))
def test_budget_exactly_at_a_configuration(seed):
    """A budget equal to some configuration's size (e.g. uniform 4 bits at avg 4) admits it."""
    rng, choices, params, _, cost = random_case(300 + seed)
    target = rng.choice(choices, size=len(params))
    budget = float(np.dot(params, target))
    res = allocate_bits(cost, choices, params, budget)
    check(res, brute_force(cost, choices, params, budget), cost, choices, params, budget)
    # the all-minimum configuration is the only one at its exact size when costs favour it
    lo = float(min(choices) * params.sum())
    res = allocate_bits(cost, choices, params, lo)
    assert res.bits == (min(choices),) * len(params)


def test_no_budget_picks_each_layer_minimum_and_all_fixed():
    cost = np.array([[3.0, 1.0, 2.0], [0.5, 0.7, 0.1]])
    res = allocate_bits(cost, (2, 4, 8), [10, 10])
    assert res.bits == (4, 8) and res.objective == pytest.approx(1.1)
    res = allocate_bits(cost, (2, 4, 8), [10, 10], 1000, fixed={0: 2, 1: 8})
    assert res.bits == (2, 8) and res.status == "fixed" and res.objective == pytest.approx(3.1)
    # a pinned width outside the candidates adds nothing to the objective and its cost row is not read
    cost[0] = np.nan
    res = allocate_bits(cost, (2, 4, 8), [10, 10], 1000, fixed={0: 6})
    assert res.bits == (6, 8) and res.objective == pytest.approx(0.1) and res.bit_params == 140


def test_infeasible_size_budget_raises_before_solving(monkeypatch):
    import mixq.knapsack as alloc

    def no_solver(*args, **kwargs):
        raise AssertionError("the solver must not run on an infeasible budget")

    monkeypatch.setattr(alloc, "milp", no_solver)
    cost = np.zeros((3, 3))
    params = [100, 200, 300]
    # all at 2 bits: 1200 bit-params = 2.0 avg bits; budget 1.5 avg bits
    with pytest.raises(MixqError, match=r"budget below the all-minimum-bits size.*needs 2\.0000 avg bits.*"
                       r"budget 1\.5000 avg bits"):
        allocate_bits(cost, (2, 4, 8), params, 1.5 * 600)
    # with layer 2 pinned at 8: 100*2 + 200*2 + 300*8 = 3000 bit-params = 5.0 avg bits
    with pytest.raises(MixqError, match=r"needs 5\.0000 avg bits.*budget 4\.0000 avg bits"):
        allocate_bits(cost, (2, 4, 8), params, 4.0 * 600, fixed={2: 8})
    with pytest.raises(MixqError, match=r"BitOps budget below.*needs 1\.2e-06 GBitOps, budget 1e-06 GBitOps"):
        allocate_bits(cost, (2, 4, 8), params, None, macs=[25, 25, 25], max_bitops=1000, act_bits=8)


def test_non_finite_cost_names_the_layer():
    cost = np.ones((3, 2))
    cost[1, 1] = np.nan
    with pytest.raises(MixqError, match=r"cost of layer 1 at 4 bits is nan"):
        allocate_bits(cost, (2, 4), [1, 1, 1], 10)
    cost[1, 1] = np.inf
    with pytest.raises(MixqError, match=r"layer 1 at 4 bits is inf"):
        allocate_bits(cost, (2, 4), [1, 1, 1], 10)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"cost": np.ones((2, 3))}, r"cost must be an array \(layers, 2\)"),
        ({"bit_choices": (2, 2)}, r"must not repeat"),
        ({"bit_choices": ()}, r"at least one"),
        ({"params": [1, 2, 3]}, r"params must have one entry per layer \(2\)"),
        ({"params": [1, -2]}, r"non-negative; layer 1"),
        ({"budget_bits_params": -1.0}, r"budget_bits_params must be a positive"),
        ({"max_bitops": 10.0}, r"max_bitops needs the per-layer MACs"),
        ({"fixed": {5: 8}}, r"fixed layer index 5 is out of range; expected 0\.\.1"),
        ({"fixed": {0: 0}}, r"fixed bits of layer 0"),
    ],
)
def test_bad_input_raises(kwargs, pattern):
    args = {"cost": np.ones((2, 2)), "bit_choices": (2, 4), "params": [1, 1], "budget_bits_params": 100.0}
    args.update(kwargs)
    with pytest.raises(MixqError, match=pattern):
        allocate_bits(**args)


# -- model level ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    x = torch.randn(2, 3, 8, 8)
    return QuantModel(model, calib=x), x


def test_layer_macs_by_hand(tiny):
    qm, x = tiny
    # conv1: out 8x6x6, 3x3x3 per output; conv2: out 8x4x4, 8x3x3 per output; linear 128 x 10
    expected = [8 * 6 * 6 * 3 * 3 * 3, 8 * 4 * 4 * 8 * 3 * 3, 128 * 10]
    assert layer_macs(qm, x.shape) == expected
    assert layer_macs(qm, (3, 8, 8)) == expected  # one unbatched sample
    assert bitops(expected, 4, act_bits=8) == sum(expected) * 32
    assert bitops(qm, BitConfig.uniform(qm.layer_names, 4), x_shape=x.shape) == sum(expected) * 32
    assert uniform_bitops(expected, 4, 6) == sum(expected) * 24
    assert bitops(expected, [2, 4, 8], act_bits=8) == (expected[0] * 2 + expected[1] * 4 + expected[2] * 8) * 8
    with pytest.raises(MixqError, match="x_shape"):
        layer_macs(qm, (2, 5, 8, 8))


def test_grouped_conv_macs():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2, stride=2), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    qm = QuantModel(model, act_bits=32)
    assert layer_macs(qm, (1, 4, 8, 8)) == [8 * 4 * 4 * 2 * 3 * 3, 128 * 3]


def test_allocate_config_fits_budget(tiny):
    qm, x = tiny
    choices = (2, 4, 8)
    rng = np.random.default_rng(0)
    table = np.sort(rng.uniform(0, 1, size=(3, 3)), axis=1)[:, ::-1].copy()
    budget = Budget(avg_bits=4)
    cfg = allocate_config(qm, table, budget, bit_choices=choices)
    cfg.validate(qm.layer_names)
    assert qm.fits(budget, cfg)
    expected = brute_force(table, list(choices), qm.layer_params, budget.max_bit_params(qm.total_params))
    got = sum(table[i, choices.index(b)] for i, b in enumerate(cfg.bits_tuple(qm.layer_names)))
    assert got == pytest.approx(expected, rel=1e-9)

    # callable cost, fixed first/last layer, MB budget and a BitOps budget
    macs = layer_macs(qm, x.shape)
    budget = Budget(size_mb=qm.size_mb(7))  # first/last pinned at 8 bits need 6.33 avg bits at least
    max_ops = uniform_bitops(macs, 6, qm.act_bits)
    cfg = allocate_config(qm, lambda i, b: float(table[i, choices.index(b)]), budget, bit_choices=choices,
                          max_bitops=max_ops, fixed={"0": 8, "4": 8}, x_shape=x.shape)
    cfg.validate(qm.layer_names)
    assert cfg.weights["0"] == 8 and cfg.weights["4"] == 8
    assert qm.fits(budget, cfg)
    assert bitops(qm, cfg, x_shape=x.shape) <= max_ops


def test_allocate_config_errors(tiny):
    qm, x = tiny
    with pytest.raises(MixqError, match=r"fixed names unknown layer\(s\) \['nope'\]"):
        allocate_config(qm, np.zeros((3, 7)), Budget(avg_bits=4), fixed={"nope": 8})
    with pytest.raises(MixqError, match="needs x_shape"):
        allocate_config(qm, np.zeros((3, 7)), Budget(avg_bits=4), max_bitops=1e9)
    with pytest.raises(MixqError, match="budget below the all-minimum-bits size"):
        allocate_config(qm, np.zeros((3, 7)), Budget(avg_bits=1.5))


def test_larger_case_is_fast():
    """58 layers x 7 choices (ResNet-scale) with size and BitOps budgets solves quickly."""
    rng = np.random.default_rng(7)
    n_layers, choices = 58, (2, 3, 4, 5, 6, 7, 8)
    params = rng.integers(500, 2_500_000, size=n_layers)
    macs = rng.integers(10**5, 10**8, size=n_layers)
    cost = rng.exponential(1.0, size=(n_layers, 1)) * 4.0 ** (-np.asarray(choices, dtype=float))[None, :]
    res = allocate_bits(cost, choices, params, 4.0 * params.sum(), macs=macs,
                        max_bitops=uniform_bitops(macs, 4) * 0.9, fixed={0: 8, n_layers - 1: 8})
    assert res.status == "optimal"
    assert res.bit_params <= 4.0 * params.sum() and res.bitops <= uniform_bitops(macs, 4) * 0.9
    assert res.seconds < 30


def test_over_budget_solver_answer_is_resolved(monkeypatch):
    """A solution that slipped past the budget through solver tolerance is rejected and re-solved."""
    import mixq.knapsack as alloc

    real_milp = alloc.milp
    calls = []

    def slipping_milp(c, **kwargs):
        res = real_milp(c, **kwargs)
        if not calls:  # first answer: 10*8 + 10*4 + 1*1 = 121 bit-params, one over the budget
            res.x = np.zeros_like(res.x)
            res.x[[0 * 4 + 3, 1 * 4 + 2, 2 * 4 + 0]] = 1.0
        calls.append(kwargs["constraints"][1].ub[0])
        return res

    monkeypatch.setattr(alloc, "milp", slipping_milp)
    cost = np.array([[4.0, 3.0, 2.0, 1.0]] * 3)
    res = allocate_bits(cost, (1, 2, 4, 8), [10, 10, 1], 120.0)
    assert calls == [120.5, 120.0]  # floor(budget) + 0.5, then tightened below the rejected 121
    assert res.bit_params <= 120 and res.status == "optimal"
    assert res.objective == pytest.approx(brute_force(cost, [1, 2, 4, 8], [10, 10, 1], 120.0))


class _Twice(nn.Module):
    """One Linear called twice per forward (a shared layer): its MACs count both calls."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.fc(torch.relu(self.fc(x))))


def test_layer_called_twice_counts_both_calls_and_bitops_use_per_layer_act_bits():
    qm = QuantModel(_Twice(), calib=torch.randn(4, 6))
    assert qm.layer_names == ["fc", "head"]
    assert layer_macs(qm, (1, 6)) == [2 * 36, 12]
    with pytest.raises(MixqError, match=r"x_shape must be an input shape such as \(N, C, H, W\), got \(0, 6\)"):
        layer_macs(qm, (0, 6))
    with pytest.raises(MixqError, match="layer_macs needs a QuantModel, got Sequential"):
        layer_macs(nn.Sequential(nn.Linear(2, 2)), (1, 2))
    config = BitConfig({"fc": 4, "head": 8}, {"fc": 6, "head": 8})
    assert bitops(qm, config, x_shape=(1, 6)) == 72 * 4 * 6 + 12 * 8 * 8


def test_equal_costs_everywhere_are_solved():
    """No cost spread at all (every choice equally good): any configuration in budget is optimal."""
    cost = np.zeros((3, 3))
    params = [10, 20, 30]
    res = allocate_bits(cost, [2, 4, 8], params, budget_bits_params=4 * 60, time_limit=30)
    assert sum(p * b for p, b in zip(params, res.bits)) <= 4 * 60
    assert res.status == "optimal" and res.objective == 0.0


@pytest.mark.parametrize("scale", [1e-9, 1e6])
@pytest.mark.parametrize("seed", range(4))
def test_tiny_and_huge_cost_units_match_brute_force(seed, scale):
    """The optimum does not depend on the cost units: costs of order 1e-9 (where HiGHS' absolute gap of
    1e-6 would accept any answer if the costs were not rescaled) and of order 1e6."""
    rng, choices, params, _, cost = random_case(200 + seed)
    cost = cost * scale
    budget = between(rng, min(choices) * params.sum(), max(choices) * params.sum())
    res = allocate_bits(cost, choices, params, budget)
    check(res, brute_force(cost, choices, params, budget), cost, choices, params, budget)
