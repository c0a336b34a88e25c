"""Edge cases of the ILP bit allocation: the exact model handed to HiGHS, solver statuses and re-solves,
budgets exactly on the 1e-12 tolerance, input checks and their messages, MACs counting and BitOps."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import mixq.knapsack as alloc
from mixq.allocate.ilp import allocate_bits, allocate_config, bitops, layer_macs, uniform_bitops
from mixq.bits import Budget
from mixq.errors import MixqError
from mixq.quant.model import QuantModel

RTOL = 1e-12  # the documented budget tolerance


# -- helpers --------------------------------------------------------------------------------------
def scaled_below(target: float) -> float:
    """A float ``b < target`` with ``b * (1 + 1e-12) == target`` exactly (the tolerance lands on target)."""
    b = target / (1 + RTOL)
    for _ in range(200):
        v = b * (1 + RTOL)
        if v == target:
            assert b < target
            return b
        b = float(np.nextafter(b, np.inf if v < target else -np.inf))
    raise AssertionError(f"no float scales onto {target}")


def brute(cost: np.ndarray, choices: Sequence[int], params: Sequence[float], budget: float | None = None,
          macs: Sequence[float] | None = None, max_ops: float | None = None, act: int = 8,
          fixed: dict[int, int] | None = None) -> tuple[float, list[tuple[int, ...]]]:
    """Best objective over every combination, and every combination reaching it."""
    best, arg = math.inf, []
    for combo in itertools.product(range(len(choices)), repeat=len(params)):
        bits = [choices[j] for j in combo]
        if any(bits[i] != b for i, b in (fixed or {}).items()):
            continue
        if budget is not None and np.dot(params, bits) > budget * (1 + RTOL):
            continue
        if max_ops is not None and np.dot(macs, bits) * act > max_ops * (1 + RTOL):
            continue
        total = float(sum(cost[i, j] for i, j in enumerate(combo)))
        if total < best - 1e-12:
            best, arg = total, [tuple(bits)]
        elif abs(total - best) <= 1e-12:
            arg.append(tuple(bits))
    return best, arg


def onehot(k: int, cols: Sequence[int]) -> np.ndarray:
    """The flattened ``(n, k)`` 0/1 vector selecting column ``cols[l]`` of every row ``l``."""
    x = np.zeros(len(cols) * k)
    x[np.arange(len(cols)) * k + np.asarray(cols)] = 1.0
    return x


def fake_milp(monkeypatch: pytest.MonkeyPatch, answers: Sequence[Any] | Callable[[int], Any]) -> list[dict]:
    """Replace the module's ``milp`` by one returning crafted results; returns the recorded calls."""
    calls: list[dict] = []

    def milp(c: np.ndarray, **kwargs: Any) -> Any:
        calls.append({"c": np.asarray(c), **kwargs,
                      "ubs": [float(np.atleast_1d(con.ub)[0]) for con in kwargs["constraints"][1:]]})
        return answers(len(calls)) if callable(answers) else answers[len(calls) - 1]

    monkeypatch.setattr(alloc, "milp", milp)
    return calls


def spy_milp(monkeypatch: pytest.MonkeyPatch, change: Callable[[Any], Any] | None = None) -> list[dict]:
    """Wrap the real ``milp`` (optionally altering its result) and record every call's arguments."""
    real = alloc.milp
    calls: list[dict] = []

    def milp(c: np.ndarray, **kwargs: Any) -> Any:
        calls.append({"c": np.asarray(c).copy(), **kwargs})
        res = real(c, **kwargs)
        return change(res) if change is not None else res

    monkeypatch.setattr(alloc, "milp", milp)
    return calls


def linear_model(n: int) -> QuantModel:
    """A QuantModel of ``n`` chained Linear(2, 2) layers named '0'..'n-1' (float activations)."""
    return QuantModel(nn.Sequential(*[nn.Linear(2, 2) for _ in range(n)]), act_bits=32)


def message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


# -- the model handed to HiGHS --------------------------------------------------------------------
def test_formulation_passed_to_milp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Costs shifted per row and scaled to a spread of 1000, binary bounds, one equality per free layer,
    integral resource rows with room ``floor(room) + 0.5`` net of the pinned layer, exact HiGHS options."""
    calls = spy_milp(monkeypatch)
    cost = np.array([[5.0, 3.0, 1.0], [4.0, 4.5, 2.0], [9.0, 8.0, 7.0]])
    params, macs = [10, 20, 30], [3, 5, 7]
    res = allocate_bits(cost, (2, 4, 8), params, 340.0, macs=macs, max_bitops=310.0, act_bits=4,
                        fixed={2: 8}, time_limit=7)
    assert len(calls) == 1
    call = calls[0]
    # free rows 0 and 1: reduced [[4, 2, 0], [2, 2.5, 0]], largest spread 4 -> x250
    np.testing.assert_allclose(call["c"], [1000.0, 500.0, 0.0, 500.0, 625.0, 0.0], rtol=1e-14)
    np.testing.assert_array_equal(call["integrality"], np.ones(6))
    assert np.all(np.asarray(call["bounds"].lb) == 0.0) and np.all(np.asarray(call["bounds"].ub) == 1.0)
    one_hot, size_row, ops_row = call["constraints"]
    np.testing.assert_array_equal(one_hot.A.toarray(), [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    assert np.all(np.broadcast_to(one_hot.lb, (2,)) == 1.0) and np.all(np.broadcast_to(one_hot.ub, (2,)) == 1.0)
    np.testing.assert_array_equal(np.asarray(size_row.A), [[20, 40, 80, 40, 80, 160]])
    assert np.all(np.asarray(size_row.lb) == -np.inf)
    assert float(np.asarray(size_row.ub)[0]) == 100.5  # 340 - 30*8 pinned = 100 (+1e-12 slack), +0.5
    np.testing.assert_array_equal(np.asarray(ops_row.A), [[24, 48, 96, 40, 80, 160]])  # macs * 4 act bits
    assert float(np.asarray(ops_row.ub)[0]) == 86.5  # 310 - 7*8*4 pinned = 86, +0.5
    assert call["options"] == {"mip_rel_gap": 0.0, "time_limit": 7.0}
    # the answer itself, against brute force: (2, 2, 8); (4, 2) would need 312 BitOps
    best, arg = brute(cost, (2, 4, 8), params, 340.0, macs, 310.0, 4, {2: 8})
    assert arg == [(2, 2, 8)] and res.bits == (2, 2, 8) and res.objective == best == 16.0
    assert res.bit_params == 300.0 and res.bitops == 288.0 and res.status == "optimal"

    calls.clear()
    allocate_bits(cost, (2, 4, 8), params, 340.0)
    assert calls[0]["options"] == {"mip_rel_gap": 0.0}
    assert len(calls[0]["constraints"]) == 2


def test_non_integral_resource_rows_keep_their_room() -> None:
    """Fractional parameter counts: the room is not rounded to floor + 0.5 (which here is below it)."""
    res = allocate_bits(np.array([[1.0, 0.0]]), (2, 6), [0.3], 1.85)
    assert res.bits == (6,) and res.bit_params == pytest.approx(1.8) and res.objective == 0.0
    assert brute(np.array([[1.0, 0.0]]), (2, 6), [0.3], 1.85)[1] == [(6,)]


def test_macs_without_bitops_budget_reports_bitops_at_default_act_bits() -> None:
    cost = np.array([[3.0, 2.0, 0.0], [3.0, 1.0, 0.0]])
    res = allocate_bits(cost, (2, 4, 8), [10, 20], 100.0, macs=[3, 5])
    # sizes: (2,2)=60, (4,2)=80, (2,4)=100; the cheapest of these is (2,4) at cost 4
    assert res.bits == (2, 4) and res.objective == 4.0 and res.bit_params == 100.0
    assert res.bitops == (3 * 2 + 5 * 4) * 8  # act_bits defaults to 8


def test_boolean_cost_is_read_as_zero_one() -> None:
    cost = np.array([[True, False, True], [False, True, True]])
    res = allocate_bits(cost, (2, 4, 8), [1, 1])
    assert res.bits == (4, 2) and res.objective == 0.0 and res.status == "optimal"


def test_bit_width_beyond_int64() -> None:
    """A bit-width of 2**64 (no int64 holds it) still solves: the widths are used as float64."""
    cost = np.array([[1.0, 0.0], [2.0, 0.0]])
    res = allocate_bits(cost, (2, 2**64), [1e-10, 2e-10], 4e9)
    # both wide would need 3*1e-10*2**64 = 5.5e9; one wide fits, the one saving 2 is layer 1
    assert res.bits == (2, 2**64) and res.objective == 1.0
    assert res.bit_params == pytest.approx(2e-10 + 2e-10 * 2.0**64, rel=1e-12)


def test_bit_params_and_bitops_are_float64_dot_products() -> None:
    """Size and BitOps are the float64 dot products of the counts with the bit-widths (here pinned
    widths of 2**64, which integers cannot hold in int64)."""
    rng = np.random.default_rng(2)
    n = 98
    params = rng.uniform(0, 1, n) * 1e-10
    macs = rng.uniform(0, 1, n) * 1e-10
    wide = np.full(n, 2.0**64)
    res = allocate_bits(np.zeros((n, 2)), (2, 4), params, None, macs=macs, act_bits=3,
                        fixed={i: 2**64 for i in range(n)})
    assert res.status == "fixed"
    assert res.bit_params == float(np.dot(params, wide))
    assert res.bitops == float(np.dot(macs, wide)) * 3


# -- budgets exactly on the tolerance ---------------------------------------------------------------
def test_config_exactly_on_the_scaled_size_budget_is_accepted() -> None:
    """A budget b with b * (1 + 1e-12) == 120 admits the configuration of size exactly 120."""
    cost = np.array([[3.0, 2.0, 0.0], [3.0, 1.0, 0.0]])
    budget = scaled_below(120.0)
    res = allocate_bits(cost, (2, 4, 8), [10, 10], budget)
    assert brute(cost, (2, 4, 8), [10, 10], budget)[1] == [(8, 4)]
    assert res.bits == (8, 4) and res.bit_params == 120.0 and res.objective == 1.0
    assert res.status == "optimal"


def test_smallest_config_exactly_on_the_scaled_budgets_is_feasible() -> None:
    cost = np.array([[3.0, 2.0, 0.0], [3.0, 1.0, 0.0]])
    # size: all at 2 bits is 40 bit-params
    res = allocate_bits(cost, (2, 4, 8), [10, 10], scaled_below(40.0))
    assert res.bits == (2, 2) and res.bit_params == 40.0 and res.status == "optimal"
    # BitOps: all at 2 bits with 1-bit activations is 3*2 + 5*2 = 16
    res = allocate_bits(cost, (2, 4, 8), [10, 10], None, macs=[3, 5], max_bitops=scaled_below(16.0), act_bits=1)
    assert res.bits == (2, 2) and res.bitops == 16.0 and res.status == "optimal"
    # a BitOps budget equal to the smallest BitOps, no fixed layers
    res = allocate_bits(cost, (2, 4, 8), [10, 10], None, macs=[3, 5], max_bitops=16.0, act_bits=1)
    assert res.bits == (2, 2) and res.bitops == 16.0 and res.status == "optimal"


# -- solver statuses and re-solves ------------------------------------------------------------------
def test_solver_failure_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    cost = np.array([[3.0, 2.0, 0.0], [3.0, 1.0, 0.0]])
    fake_milp(monkeypatch, [SimpleNamespace(x=None, status=1, message="Time limit reached.")])
    with pytest.raises(MixqError) as excinfo:
        allocate_bits(cost, (2, 4, 8), [10, 10], 100.0, time_limit=1)
    assert message(excinfo) == "the bit-allocation ILP failed: Time limit reached. (HiGHS status 1)"
    fake_milp(monkeypatch, [SimpleNamespace(x=onehot(3, [0, 0]), status=2, message="The problem is infeasible.")])
    with pytest.raises(MixqError) as excinfo:
        allocate_bits(cost, (2, 4, 8), [10, 10], 100.0)
    assert message(excinfo) == "the bit-allocation ILP failed: The problem is infeasible. (HiGHS status 2)"


def test_time_limit_status_with_a_solution(monkeypatch: pytest.MonkeyPatch) -> None:
    def as_time_limit(res: Any) -> Any:
        return SimpleNamespace(x=res.x, status=1, message="Time limit reached.")

    spy_milp(monkeypatch, as_time_limit)
    cost = np.array([[3.0, 2.0, 0.0], [3.0, 1.0, 0.0]])
    res = allocate_bits(cost, (2, 4, 8), [10, 20], 100.0, time_limit=5)
    assert res.status == "time_limit" and res.bits == (2, 4)


def test_over_budget_every_time_gives_up_after_three_solves(monkeypatch: pytest.MonkeyPatch) -> None:
    over = SimpleNamespace(x=onehot(3, [2, 2]), status=0, message="ok")  # 160 bit-params, budget 100
    calls = fake_milp(monkeypatch, lambda i: over)
    with pytest.raises(MixqError) as excinfo:
        allocate_bits(np.array([[3.0, 2.0, 0.0], [3.0, 1.0, 0.0]]), (2, 4, 8), [10, 10], 100.0)
    assert message(excinfo) == ("the bit-allocation ILP returned solutions over budget (numerical trouble); "
                                "try a slightly different budget")
    assert len(calls) == 3
    assert [c["ubs"] for c in calls] == [[100.5], [100.5], [100.5]]  # 160 - 1 is not tighter than 100.5


def test_fractional_row_is_tightened_just_below_the_rejected_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A solution 1e-8 over a fractional room is rejected; the row is re-solved at the rejected size
    minus 1e-9 x room."""
    params = [10.5, 20.25]  # coefficients 21 42 84 / 40.5 81 162: not integral
    budget = (165.0 - 1e-8) / (1 + RTOL)
    room = budget * (1 + RTOL)
    assert 165.0 - 1e-9 * room < room < 165.0
    calls = fake_milp(monkeypatch, [SimpleNamespace(x=onehot(3, [2, 1]), status=0, message="ok"),  # 84 + 81
                                    SimpleNamespace(x=onehot(3, [2, 0]), status=0, message="ok")])  # 124.5
    res = allocate_bits(np.zeros((2, 3)), (2, 4, 8), params, budget)
    assert len(calls) == 2
    assert calls[0]["ubs"] == [room]
    assert calls[1]["ubs"][0] == pytest.approx(165.0 - 1e-9 * room, rel=1e-15, abs=0)
    assert res.bits == (8, 2) and res.bit_params == 124.5 and res.status == "optimal"


def test_only_violated_rows_are_tightened(monkeypatch: pytest.MonkeyPatch) -> None:
    """Size over (160 > 159.6) and BitOps exactly at their room (44): only the size row tightens."""
    max_ops = scaled_below(44.0)
    calls = fake_milp(monkeypatch, [SimpleNamespace(x=onehot(3, [2, 1]), status=0, message="ok"),  # (8, 4)
                                    SimpleNamespace(x=onehot(3, [1, 1]), status=0, message="ok")])  # (4, 4)
    res = allocate_bits(np.zeros((2, 3)), (2, 4, 8), [10, 20], 159.6, macs=[3, 5], max_bitops=max_ops,
                        act_bits=1)
    assert [c["ubs"] for c in calls] == [[159.5, 44.5], [159.0, 44.5]]
    assert res.bits == (4, 4) and res.bit_params == 120.0 and res.bitops == 32.0


# -- input checks -----------------------------------------------------------------------------------
def run(**kwargs: Any) -> alloc.AllocationResult:
    args: dict[str, Any] = {"cost": np.zeros((2, 2)), "bit_choices": (2, 4), "params": [1, 1],
                            "budget_bits_params": 100.0}
    args.update(kwargs)
    return allocate_bits(**args)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"bit_choices": ()}, "bit_choices must name at least one bit-width, got none"),
        ({"bit_choices": (0, 2)}, "bit_choices must be positive integers, got [0, 2]"),
        ({"bit_choices": (2.5, 4)}, "bit_choices must be positive integers, got [2.5, 4]"),
        ({"bit_choices": (True, 4)}, "bit_choices must be positive integers, got [True, 4]"),
        ({"cost": np.zeros((0, 2)), "params": []},
         "cost must be an array (layers, 2) with one column per bit choice [2, 4], got shape (0, 2)"),
        ({"params": [1, -2]}, "params must be finite and non-negative; layer 1 has -2.0"),
        ({"macs": [1, 2, 3]}, "macs must have one entry per layer (2), got shape (3,)"),
        ({"budget_bits_params": 0}, "budget_bits_params must be a positive finite number, got 0"),
        ({"macs": [1, 1], "max_bitops": -1}, "max_bitops must be a positive finite number, got -1"),
        ({"max_bitops": 10.0}, "max_bitops needs the per-layer MACs (macs=...)"),
        ({"act_bits": 0}, "act_bits must be a positive integer, got 0"),
        ({"act_bits": True}, "act_bits must be a positive integer, got True"),
        ({"fixed": {2: 8}}, "fixed layer index 2 is out of range; expected 0..1"),
        ({"fixed": {True: 8}}, "fixed layer index True is out of range; expected 0..1"),
        ({"fixed": {0: True}}, "fixed bits of layer 0 must be a positive integer, got True"),
        ({"fixed": {0: 2.5}}, "fixed bits of layer 0 must be a positive integer, got 2.5"),
    ],
)
def test_bad_input_exact_messages(kwargs: dict, text: str) -> None:
    with pytest.raises(MixqError) as excinfo:
        run(**kwargs)
    assert message(excinfo) == text


def test_non_finite_cost_of_a_pinned_candidate_is_rejected() -> None:
    cost = np.zeros((2, 2))
    cost[0, 1] = np.nan
    with pytest.raises(MixqError) as excinfo:
        run(cost=cost, fixed={0: 4})
    assert message(excinfo) == "cost of layer 0 at 4 bits is nan; costs must be finite"


def test_boundary_values_that_are_valid() -> None:
    """Zero and fractional parameter counts, a budget below 1, 1-bit activations, a layer pinned at 1 bit,
    and a single layer are all accepted."""
    res = run(cost=np.array([[0.0, 1.0], [1.0, 0.0]]), params=[0, 10], budget_bits_params=40.0)
    assert res.bits == (2, 4) and res.bit_params == 40.0
    res = run(cost=np.array([[0.0, 1.0], [1.0, 0.0]]), params=[0.5, 10], budget_bits_params=41.0)
    assert res.bits == (2, 4) and res.bit_params == 41.0
    res = run(params=[0.1, 0.1], budget_bits_params=0.5)
    assert res.bits == (2, 2) and res.bit_params == pytest.approx(0.4)
    res = run(cost=np.array([[1.0, 0.0], [1.0, 0.0]]), macs=[3, 5], act_bits=1)
    assert res.bits == (4, 4) and res.bitops == 32.0
    res = run(cost=np.array([[1.0, 0.0], [1.0, 0.0]]), fixed={0: 1})
    assert res.bits == (1, 4) and res.objective == 0.0 and res.bit_params == 5.0
    res = run(cost=np.array([[1.0, 0.0]]), params=[3], budget_bits_params=12.0)
    assert res.bits == (4,) and res.status == "optimal"


def test_size_budget_message_in_full() -> None:
    p = 2**22
    with pytest.raises(MixqError) as excinfo:
        allocate_bits(np.zeros((3, 3)), (4, 2, 8), [p, p, p], 3.0 * 3 * p, fixed={2: 8})
    assert message(excinfo) == (
        "budget below the all-minimum-bits size: the smallest configuration (2 free layer(s) at 2 bits, "
        "1 fixed layer(s) at their bits) needs 4.0000 avg bits (50331648 bit-params, 6.0000 MB), "
        "budget 3.0000 avg bits (37748736 bit-params, 4.5000 MB)")
    # fewer than one parameter in total: the averages still divide by it
    with pytest.raises(MixqError) as excinfo:
        allocate_bits(np.zeros((2, 2)), (2, 4), [0.25, 0.25], 0.5)
    assert message(excinfo) == (
        "budget below the all-minimum-bits size: the smallest configuration (2 free layer(s) at 2 bits, "
        "0 fixed layer(s) at their bits) needs 2.0000 avg bits (1 bit-params, 0.0000 MB), "
        "budget 1.0000 avg bits (0 bit-params, 0.0000 MB)")


def test_bitops_budget_message_in_full() -> None:
    with pytest.raises(MixqError) as excinfo:
        allocate_bits(np.zeros((1, 2)), (1, 2), [1], None, macs=[1000005001], max_bitops=1000005000.5, act_bits=1)
    assert message(excinfo) == (
        "BitOps budget below the all-minimum-bits BitOps: the smallest configuration (1 free layer(s) at "
        "1 bits, 0 fixed at their bits, 1-bit activations) needs 1.00001 GBitOps, budget 1.00001 GBitOps")


# -- MACs -------------------------------------------------------------------------------------------
def test_layer_macs_of_float64_meta_and_parameterless_models() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert layer_macs(QuantModel(model.double(), act_bits=32), (1, 4)) == [12, 6]  # float64 weights
    on_meta = QuantModel(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), act_bits=32).to("meta")
    assert layer_macs(on_meta, (1, 4)) == [12, 6]  # the probe sample goes to the model's device
    lin = nn.Linear(4, 3, bias=False)
    weight = lin.weight.detach().clone()
    del lin.weight
    lin.register_buffer("weight", weight)  # a weight held as a buffer: the model has no parameters
    qm = QuantModel(nn.Sequential(lin), act_bits=32)
    assert list(qm.parameters()) == []
    assert layer_macs(qm, (1, 4)) == [12]


def test_layer_macs_of_a_transposed_conv_counts_input_elements() -> None:
    qm = QuantModel(nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2)), act_bits=32)
    # every one of the 2*5*5 input elements meets C_out x 3 x 3 = 27 weights
    assert layer_macs(qm, (2, 5, 5)) == [2 * 5 * 5 * 27]


# -- BitOps -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_linear() -> QuantModel:
    """Linear(4, 4) then Linear(4, 2): 16 and 8 MACs per sample."""
    torch.manual_seed(0)
    return QuantModel(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), act_bits=32)


def test_bitops_inputs_and_messages(two_linear: QuantModel) -> None:
    assert bitops(two_linear, {"0": 4, "2": 8}, x_shape=(1, 4)) == (16 * 4 + 8 * 8) * 8
    assert uniform_bitops([3, 5], 4) == 8 * 4 * 8
    cases = [
        (lambda: bitops(two_linear, 4), "bitops of a QuantModel needs x_shape to count MACs"),
        (lambda: bitops([1, 2], {"0": 4}), "bitops with a MACs list needs bits as an int or a per-layer sequence"),
        (lambda: bitops([1, 2, 3], [4, 4]), "bits must give one bit-width per layer (3), got 2"),
    ]
    for call, text in cases:
        with pytest.raises(MixqError) as excinfo:
            call()
        assert message(excinfo) == text


# -- allocate_config --------------------------------------------------------------------------------
def test_allocate_config_bitops_budget_with_explicit_act_bits(two_linear: QuantModel) -> None:
    """act_bits=4 (the model's own are 32) and a BitOps bound of 320: the size budget (8 avg bits) does
    not bind, the BitOps bound picks (2, 4)."""
    cost = np.array([[3.0, 2.0, 0.0], [3.0, 1.0, 0.0]])
    cfg = allocate_config(two_linear, cost, Budget(avg_bits=8), bit_choices=(2, 4, 8), max_bitops=320.0,
                          x_shape=(1, 4), act_bits=4)
    assert brute(cost, (2, 4, 8), two_linear.layer_params, None, [16, 8], 320.0, 4)[1] == [(2, 4)]
    assert cfg.weights == {"0": 2, "2": 4}


def test_allocate_config_forwards_time_limit(monkeypatch: pytest.MonkeyPatch, two_linear: QuantModel) -> None:
    calls = spy_milp(monkeypatch)
    cost = np.array([[3.0, 2.0, 0.0], [3.0, 1.5, 0.0]])
    cfg = allocate_config(two_linear, cost, Budget(avg_bits=4), bit_choices=(2, 4, 8), time_limit=5)
    assert calls[0]["options"] == {"mip_rel_gap": 0.0, "time_limit": 5.0}
    assert brute(cost, (2, 4, 8), two_linear.layer_params, 96.0)[1] == [(2, 8)]  # 4 avg bits over 24 params
    assert cfg.weights == {"0": 2, "2": 8}


def test_allocate_config_exact_messages(two_linear: QuantModel) -> None:
    six, five = linear_model(6), linear_model(5)
    cases = [
        (lambda: allocate_config(five, np.zeros((5, 7)), 4), "budget must be a Budget, got int"),
        (lambda: allocate_config(six, np.zeros((6, 7)), Budget(avg_bits=4), fixed=dict.fromkeys("abcdef", 8)),
         "fixed names unknown layer(s) ['a', 'b', 'c', 'd', 'e']; the model's layers are "
         "['0', '1', '2', '3', '4'] ..."),
        (lambda: allocate_config(five, np.zeros((5, 7)), Budget(avg_bits=4), fixed={"x": 8}),
         "fixed names unknown layer(s) ['x']; the model's layers are ['0', '1', '2', '3', '4']"),
        (lambda: allocate_config(two_linear, np.zeros((2, 7)), Budget(avg_bits=4), max_bitops=1e9),
         "a BitOps budget needs x_shape (the model input shape) to count MACs"),
    ]
    for call, text in cases:
        with pytest.raises(MixqError) as excinfo:
            call()
        assert message(excinfo) == text


def test_solver_debug_lines_do_not_reach_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    """HiGHS in scipy 1.17 prints ``HighsMipSolverData::...`` lines to descriptor 1 on this problem; the
    allocation must keep them off the user's output (and leave Python's own printing working after it)."""
    rng = np.random.default_rng(0)
    choices = (2, 3, 4, 5, 6, 8)
    cost = np.stack([rng.random(60) * 2.0 ** (-2 * b) for b in choices], 1)
    params = rng.integers(100, 100000, 60)
    result = alloc.allocate_bits(cost, choices, params, budget_bits_params=3.0 * params.sum())
    print("after")
    out = capfd.readouterr().out
    assert out == "after\n"
    assert sum(p * b for p, b in zip(params, result.bits)) <= 3.0 * params.sum()
