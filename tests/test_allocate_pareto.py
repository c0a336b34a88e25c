"""ILP over (weight, input) bit pairs against brute force, BitOps budgets, the sensitivity proxy, the budget
sweep's front, and ``mixq allocate --pareto`` / ``--act-choices`` end to end on the embedded demo."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

import mixq.knapsack as alloc
from mixq.allocate.ilp import allocate_bits, allocate_config, allocate_pairs
from mixq.allocate.pareto import SweepPoint, run_allocation_pareto, sweep_budgets, sweep_front
from mixq.allocate.run import allocate, check_act_choices
from mixq.bits import MB, BitConfig, Budget
from mixq.cli import main
from mixq.errors import MixqError
from mixq.evoq.calibrate import CalibrationConfig
from mixq.evoq.sensitivity import compute_act_sensitivity, compute_sensitivity
from mixq.pareto import nondominated_ranks
from mixq.proxies import get_proxy, stats_for
from mixq.quant.cost import CostModel
from mixq.quant.model import QuantModel

RTOL = 1e-12
W_CHOICES = (2, 4, 8)
A_CHOICES = (4, 6, 8)


# -- helpers --------------------------------------------------------------------------------------
def brute_pairs(wc, ac, w_choices, a_choices, params, budget=None, macs=None, max_ops=None, fixed=None):
    """Best objective over every (weight, input) assignment, or None when nothing fits."""
    n = len(params)
    combos = np.array(list(itertools.product(range(len(w_choices) * len(a_choices)), repeat=n)))
    wi, ai = combos // len(a_choices), combos % len(a_choices)
    w, a = np.asarray(w_choices)[wi], np.asarray(a_choices)[ai]
    ok = np.ones(len(combos), dtype=bool)
    for layer, pin in (fixed or {}).items():
        pw, pa = pin if isinstance(pin, tuple) else (pin, None)
        ok &= w[:, layer] == pw
        if pa is not None:
            ok &= a[:, layer] == pa
    if budget is not None:
        ok &= w @ np.asarray(params, dtype=float) <= budget * (1 + RTOL)
    if max_ops is not None:
        ok &= (w * a) @ np.asarray(macs, dtype=float) <= max_ops * (1 + RTOL)
    if not ok.any():
        return None
    rows = np.arange(n)
    totals = np.asarray(wc)[rows, wi].sum(axis=1) + np.asarray(ac)[rows, ai].sum(axis=1)
    return float(totals[ok].min())


def pair_case(seed: int):
    """3-4 layers, costs falling with the bits (weights and inputs), plus noise."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 5))
    params = rng.integers(10, 5000, size=n)
    macs = rng.integers(1000, 10**6, size=n)
    wc = rng.exponential(1.0, (n, 1)) * 2.0 ** -np.asarray(W_CHOICES, float)[None, :] * rng.uniform(0.5, 1.5, (n, 3))
    ac = rng.exponential(1.0, (n, 1)) * 2.0 ** -np.asarray(A_CHOICES, float)[None, :] * rng.uniform(0.5, 1.5, (n, 3))
    return rng, params, macs, wc, ac


def between(rng, lo: float, hi: float) -> float:
    return float(lo + rng.uniform(0.05, 0.95) * (hi - lo))


def check_pairs(res, expected, wc, ac, params, budget=None, macs=None, max_ops=None):
    assert expected is not None
    assert res.objective == pytest.approx(expected, rel=1e-9, abs=1e-15)
    wi = [W_CHOICES.index(b) for b in res.bits]
    ai = [A_CHOICES.index(a) for a in res.acts]
    rows = np.arange(len(params))
    assert res.objective == pytest.approx(float(wc[rows, wi].sum() + ac[rows, ai].sum()), rel=1e-12)
    assert res.bit_params == float(np.dot(params, res.bits))
    if budget is not None:
        assert res.bit_params <= budget * (1 + RTOL)
    if macs is not None:
        assert res.bitops == float(np.dot(macs, np.asarray(res.bits) * np.asarray(res.acts)))
    if max_ops is not None:
        assert res.bitops <= max_ops * (1 + RTOL)
    assert res.status == "optimal"


# -- the pair ILP ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_pairs_with_size_and_bitops_limits_match_brute_force(seed):
    rng, params, macs, wc, ac = pair_case(seed)
    budget = between(rng, 2 * params.sum(), 8 * params.sum())
    max_ops = between(rng, 8 * macs.sum(), 64 * macs.sum())
    res = allocate_pairs(wc, W_CHOICES, ac, A_CHOICES, params, budget, macs=macs, max_bitops=max_ops)
    check_pairs(res, brute_pairs(wc, ac, W_CHOICES, A_CHOICES, params, budget, macs, max_ops), wc, ac, params,
                budget, macs, max_ops)
    # each limit alone
    res = allocate_pairs(wc, W_CHOICES, ac, A_CHOICES, params, None, macs=macs, max_bitops=max_ops)
    check_pairs(res, brute_pairs(wc, ac, W_CHOICES, A_CHOICES, params, None, macs, max_ops), wc, ac, params,
                None, macs, max_ops)
    res = allocate_pairs(wc, W_CHOICES, ac, A_CHOICES, params, budget)
    check_pairs(res, brute_pairs(wc, ac, W_CHOICES, A_CHOICES, params, budget), wc, ac, params, budget)
    assert res.bitops is None  # no MACs given


@pytest.mark.parametrize("seed", range(4))
def test_pairs_with_pinned_layers_match_brute_force(seed):
    rng, params, macs, wc, ac = pair_case(100 + seed)
    n = len(params)
    fixed = {0: (8, 8), n - 1: 4}  # a whole pair; a weight whose input is still chosen
    floor_ops = macs[0] * 64 + macs[n - 1] * 4 * 4 + 2 * 4 * macs[1:-1].sum()
    max_ops = between(rng, floor_ops, 64 * macs.sum())
    budget = between(rng, 8 * params[0] + 4 * params[-1] + 2 * params[1:-1].sum(), 8 * params.sum())
    res = allocate_pairs(wc, W_CHOICES, ac, A_CHOICES, params, budget, macs=macs, max_bitops=max_ops, fixed=fixed)
    check_pairs(res, brute_pairs(wc, ac, W_CHOICES, A_CHOICES, params, budget, macs, max_ops, fixed), wc, ac,
                params, budget, macs, max_ops)
    assert (res.bits[0], res.acts[0]) == (8, 8) and res.bits[-1] == 4


def test_one_input_choice_is_the_weight_only_ilp():
    """With a single input bit-width of zero cost, the pair ILP is allocate_bits at those activation bits."""
    for seed in range(4):
        rng, params, macs, wc, _ = pair_case(200 + seed)
        max_ops = between(rng, 2 * 6 * macs.sum(), 8 * 6 * macs.sum())
        budget = between(rng, 2 * params.sum(), 8 * params.sum())
        pairs = allocate_pairs(wc, W_CHOICES, np.zeros((len(params), 1)), (6,), params, budget, macs=macs,
                               max_bitops=max_ops)
        single = allocate_bits(wc, W_CHOICES, params, budget, macs=macs, max_bitops=max_ops, act_bits=6)
        assert pairs.objective == pytest.approx(single.objective, rel=1e-12)
        assert pairs.acts == (6,) * len(params) and single.acts is None
        assert pairs.bitops <= max_ops * (1 + RTOL) and pairs.bit_params <= budget * (1 + RTOL)


def test_all_pinned_pairs_need_no_solve(monkeypatch):
    monkeypatch.setattr(alloc, "milp", lambda *a, **k: pytest.fail("no solve expected"))
    res = allocate_pairs(np.ones((2, 3)), W_CHOICES, np.ones((2, 3)), A_CHOICES, [10, 20], 1000.0,
                         fixed={0: (2, 4), 1: (8, 6)})
    assert res.status == "fixed" and res.bits == (2, 8) and res.acts == (4, 6) and res.objective == 4.0


def test_infeasible_bitops_budget_names_the_smallest_value_before_solving(monkeypatch):
    monkeypatch.setattr(alloc, "milp", lambda *a, **k: pytest.fail("the solver must not run"))
    macs = [1000, 3000]
    smallest = 2 * 4 * 4000  # every layer at 2-bit weights and 4-bit inputs: 32000 BitOps
    with pytest.raises(MixqError) as excinfo:
        allocate_pairs(np.zeros((2, 3)), W_CHOICES, np.zeros((2, 3)), A_CHOICES, [5, 5], macs=macs,
                       max_bitops=smallest - 1)
    text = str(excinfo.value)
    assert text.startswith("BitOps budget below the all-minimum BitOps")
    assert f"needs {smallest / 1e9:.6g} GBitOps ({smallest:.6g} BitOps)" in text
    assert "2-bit weights and 4-bit inputs" in text
    # exactly the smallest value is feasible
    monkeypatch.undo()
    res = allocate_pairs(np.zeros((2, 3)), W_CHOICES, np.zeros((2, 3)), A_CHOICES, [5, 5], macs=macs,
                         max_bitops=smallest)
    assert res.bitops == smallest
    # the size row gives allocate_bits' message
    with pytest.raises(MixqError, match=r"budget below the all-minimum-bits size.*needs 2\.0000 avg bits"):
        allocate_pairs(np.zeros((2, 3)), W_CHOICES, np.zeros((2, 3)), A_CHOICES, [5, 5], 15.0)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"act_choices": ()}, "act_choices must name at least one bit-width, got none"),
        ({"act_choices": (4, 4, 8)}, "act_choices must not repeat a bit-width, got [4, 4, 8]"),
        ({"act_cost": np.zeros((2, 2))},
         "act_cost must be an array (2, 3) with one column per act choice [4, 6, 8], got shape (2, 2)"),
        ({"weight_cost": np.zeros((2, 2))},
         "weight_cost must be an array (layers, 3) with one column per bit choice [2, 4, 8], got shape (2, 2)"),
        ({"fixed": {0: (8, 8, 8)}},
         "fixed bits of layer 0 must be a positive weight bit-width or a (weight, input) pair of them, got (8, 8, 8)"),
        ({"max_bitops": 10.0}, "max_bitops needs the per-layer MACs (macs=...)"),
    ],
)
def test_pair_input_errors(kwargs, text):
    args = {"weight_cost": np.zeros((2, 3)), "bit_choices": W_CHOICES, "act_cost": np.zeros((2, 3)),
            "act_choices": A_CHOICES, "params": [1, 1]}
    args.update(kwargs)
    with pytest.raises(MixqError) as excinfo:
        allocate_pairs(**args)
    assert str(excinfo.value) == text


def test_non_finite_input_cost_names_the_layer():
    ac = np.zeros((2, 3))
    ac[1, 2] = np.nan
    with pytest.raises(MixqError, match=r"^act_cost of layer 1 at 8 bits is nan; costs must be finite$"):
        allocate_pairs(np.zeros((2, 3)), W_CHOICES, ac, A_CHOICES, [1, 1])


# -- model level ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 10))
    x = torch.randn(8, 3, 8, 8)
    return QuantModel(model, calib=x), x


def test_allocate_config_bitops_only_budget_and_input_bits(tiny):
    qm, x = tiny
    cm = CostModel.from_model(qm, x.shape)
    rng = np.random.default_rng(0)
    wc = np.sort(rng.uniform(0, 1, (3, 3)), axis=1)[:, ::-1].copy()
    ac = np.sort(rng.uniform(0, 1, (3, 3)), axis=1)[:, ::-1].copy()
    limit = cm.bitops(4, 6)
    cfg = allocate_config(qm, wc, Budget(bitops=limit), bit_choices=W_CHOICES, x_shape=x.shape, act_cost=ac,
                          act_choices=A_CHOICES)
    assert set(cfg.acts) == set(qm.layer_names)
    assert cm.of_config(cfg)["bitops"] <= limit * (1 + RTOL)
    expect = brute_pairs(wc, ac, W_CHOICES, A_CHOICES, cm.params, None, cm.macs, limit)
    rows = np.arange(3)
    got = wc[rows, [W_CHOICES.index(b) for b in cfg.bits_tuple(qm.layer_names)]].sum() + \
        ac[rows, [A_CHOICES.index(cfg.acts[n]) for n in qm.layer_names]].sum()
    assert got == pytest.approx(expect, rel=1e-9)
    # weight-only with a BitOps-only budget: no size limit, inputs at the model's bits
    cfg = allocate_config(qm, wc, Budget(bitops=cm.bitops(3)), bit_choices=W_CHOICES, x_shape=x.shape)
    assert not cfg.acts and cm.of_config(cfg)["bitops"] <= cm.bitops(3) * (1 + RTOL)
    with pytest.raises(MixqError, match="a BitOps budget needs x_shape"):
        allocate_config(qm, wc, Budget(bitops=1e9), bit_choices=W_CHOICES)
    with pytest.raises(MixqError, match="act_choices needs act_cost"):
        allocate_config(qm, wc, Budget(avg_bits=4), bit_choices=W_CHOICES, act_choices=A_CHOICES)


def test_sensitivity_proxy_is_evoqs_table(tiny):
    qm, x = tiny
    qm.set_bits(4)
    stats = stats_for(qm, get_proxy("sensitivity"), x)
    table = compute_sensitivity(qm, x, bits=(2, 3, 4, 5, 6, 7, 8), progress=False)
    np.testing.assert_array_equal(stats.values["mse"], table.mse)
    np.testing.assert_array_equal(get_proxy("sensitivity").layer_costs(stats, [2, 4, 8]), table.mse[:, [0, 2, 6]])
    assert all(m.weight_quantizer.bits == 4 and m.input_quantizer.bits == 8 for m in qm.layers.values())


def test_allocate_with_act_choices_and_bitops(tiny):
    qm, x = tiny
    cm = CostModel.from_model(qm, x.shape)
    cfg = allocate(qm, "sensitivity", samples=x, bitops=cm.bitops(4, 6), act_choices=[8, 4, 6],
                   bit_choices=W_CHOICES)
    assert set(cfg.acts.values()) <= set(A_CHOICES) and len(cfg.acts) == 3
    assert cm.of_config(cfg)["bitops"] <= cm.bitops(4, 6) * (1 + RTOL)
    weights = get_proxy("sensitivity").layer_costs(stats_for(qm, get_proxy("sensitivity"), x), W_CHOICES)
    inputs = compute_act_sensitivity(qm, x, A_CHOICES, progress=False).mse
    rows = np.arange(3)
    got = weights[rows, [W_CHOICES.index(b) for b in cfg.bits_tuple(qm.layer_names)]].sum() + \
        inputs[rows, [A_CHOICES.index(cfg.acts[n]) for n in qm.layer_names]].sum()
    expect = brute_pairs(weights, inputs, W_CHOICES, A_CHOICES, cm.params, None, cm.macs, cm.bitops(4, 6))
    assert got == pytest.approx(expect, rel=1e-9)
    # the same through max_gbitops; weight-only results stay what allocate_config gives
    assert allocate(qm, "sensitivity", samples=x, max_gbitops=cm.bitops(4, 6) / 1e9, act_choices=A_CHOICES,
                    bit_choices=W_CHOICES) == cfg
    plain = allocate(qm, "bparams", samples=x, target_bits=4.0, bit_choices=W_CHOICES)
    assert plain == allocate_config(qm, -get_proxy("bparams").statistics(qm, qm.layer_names, x).gains[:, [0, 2, 6]],
                                    Budget(avg_bits=4.0), bit_choices=W_CHOICES)


def test_act_choices_need_the_sensitivity_proxy():
    assert check_act_choices("hawq-v3", None) is None and check_act_choices("sensitivity", [8, 4]) == (4, 8)
    with pytest.raises(MixqError) as excinfo:
        check_act_choices("hawq-v3", [4, 8])
    assert str(excinfo.value) == ("W/A allocation (--act-choices 4 8) needs --proxy sensitivity: only its weight "
                                  "costs (output MSE) share units with the input costs; got --proxy hawq-v3")
    with pytest.raises(MixqError, match=r"act choices must be distinct input bit-widths in 2\.\.8, got \[4, 9\]"):
        check_act_choices("sensitivity", [4, 9])


# -- the sweep --------------------------------------------------------------------------------------
def _toy_cost_model(seed: int) -> tuple[CostModel, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 4
    cm = CostModel(tuple(f"l{i}" for i in range(n)), tuple(int(v) for v in rng.integers(100, 5000, n)),
                   tuple(int(v) for v in rng.integers(10**4, 10**6, n)), 8)
    wc = rng.exponential(1.0, (n, 1)) * 2.0 ** -np.asarray(W_CHOICES, float)[None, :] * rng.uniform(0.5, 1.5, (n, 3))
    ac = rng.exponential(1.0, (n, 1)) * 2.0 ** -np.asarray(A_CHOICES, float)[None, :] * rng.uniform(0.5, 1.5, (n, 3))
    return cm, wc, ac


@pytest.mark.parametrize("cost", ["bitops", "mb", "bits"])
@pytest.mark.parametrize("pairs", [False, True], ids=["weights", "weights+inputs"])
@pytest.mark.parametrize("seed", range(3))
def test_sweep_front_is_non_dominated_sorted_and_within_budgets(seed, pairs, cost):
    cm, wc, ac = _toy_cost_model(seed)
    kwargs = {"act_cost": ac, "act_choices": A_CHOICES} if pairs else {}
    front, budgets, distinct = sweep_front(wc, W_CHOICES, cm, cost, points=8, **kwargs)
    assert budgets == sorted(budgets) and len(budgets) >= 8 and distinct >= len(front) >= 2
    acts = A_CHOICES if pairs else (8,)
    assert budgets[0] == pytest.approx(cm.cost_of(cost, 2, min(acts)))
    assert budgets[-1] == pytest.approx(cm.cost_of(cost, 8, max(acts)))
    f = np.array([[p.cost, p.objective] for p in front])
    assert np.all(nondominated_ranks(f) == 0)
    assert np.all(np.diff(f[:, 0]) > 0) and np.all(np.diff(f[:, 1]) < 0)  # cheapest first, better as it costs more
    rows = np.arange(4)
    for p in front:
        assert isinstance(p, SweepPoint) and p.cost <= p.budget * (1 + 1e-9)
        assert p.cost == pytest.approx(cm.cost_of(cost, p.bits, p.acts), rel=1e-12)
        obj = wc[rows, [W_CHOICES.index(b) for b in p.bits]].sum()
        if pairs:
            obj += ac[rows, [A_CHOICES.index(a) for a in p.acts]].sum()
        assert p.objective == pytest.approx(obj, rel=1e-12)
    # every uniform configuration is matched or beaten: a front point no dearer and no worse
    for w in W_CHOICES:
        for a in acts:
            u_cost = cm.cost_of(cost, w, a)
            u_obj = wc[:, W_CHOICES.index(w)].sum() + (ac[:, A_CHOICES.index(a)].sum() if pairs else 0.0)
            assert any(p.cost <= u_cost * (1 + 1e-9) and p.objective <= u_obj * (1 + 1e-9) + 1e-15 for p in front), \
                (w, a)


def test_sweep_budgets_and_errors():
    cm, wc, ac = _toy_cost_model(0)
    b = sweep_budgets(cm, "mb", 5, W_CHOICES)
    assert b[0] == pytest.approx(cm.size_mb(2)) and b[-1] == pytest.approx(cm.size_mb(8))
    assert any(v == pytest.approx(cm.bit_params(4) / MB) for v in b)
    with pytest.raises(MixqError, match=r"cost must be one of \['bits', 'mb', 'bitops'\], got 'flops'"):
        sweep_budgets(cm, "flops", 5, W_CHOICES)
    with pytest.raises(MixqError, match="the number of budgets must be an integer of at least 2, got 1"):
        sweep_budgets(cm, "mb", 1, W_CHOICES)
    with pytest.raises(MixqError, match="act_cost and act_choices go together"):
        sweep_front(wc, W_CHOICES, cm, "mb", 5, act_cost=ac)


# -- end to end on the demo -------------------------------------------------------------------------
def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mixq: error: ") and "Traceback" not in err, err
    return err


def test_cli_pareto_end_to_end(demo_only, tmp_path, capsys):
    out = tmp_path / "front"
    assert main(["allocate", "--pareto", "--proxy", "sensitivity", "--act-choices", "4", "8",
                 "--bit-choices", "2", "4", "8", "--pareto-budgets", "5", "--front-points", "3", "--samples", "8",
                 "--proxy-batch", "8", "--n-test", "40", "--no-progress", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "non-dominated" in text and "uniform W4A8" in text and "front 2" in text
    for name in ("pareto.json", "pareto.png", "report.md"):
        assert (out / name).is_file()
    r = json.loads((out / "pareto.json").read_text())
    assert r["method"] == "allocate" and r["cost"] == "bitops" and r["proxy"] == "sensitivity"
    assert r["n_test"] == 40 and r["samples"] == 8 and r["seed"] == 0 and r["act_choices"] == [4, 8]
    assert set(r["seconds"]) == {"proxy", "ilp", "evaluation"} and "torch" in json.dumps(r["versions"])
    assert [(u["weight_bits"], u["act_bits"]) for u in r["uniform"]] == [(b, a) for b in (2, 3, 4, 8) for a in (4, 8)]
    assert set(r["fp32"]) == {"top1", "size_mb", "bitops"}
    assert 2 <= len(r["front"]) <= 3 and r["front_size"] >= len(r["front"])
    from mixq.evaluation.task import load_task

    task = load_task("resnet20-jpeg", samples=8, seed=0, n_test=40)
    cm = CostModel.from_model(QuantModel(task.model, calib=task.calib), tuple(task.calib.shape[1:]))
    bitops = [p["bitops"] for p in r["front"]]
    scores = [p["score"] for p in r["front"]]
    assert bitops == sorted(bitops) and scores == sorted(scores, reverse=True)
    for i, p in enumerate(r["front"]):
        cfg = BitConfig.load(out / "front" / f"{i:02d}" / "config.json")
        assert p["config"] == f"front/{i:02d}/config.json" and BitConfig.from_dict(p["bits"]) == cfg
        assert set(cfg.acts.values()) <= {4, 8}
        costs = cm.of_config(cfg)
        for key in ("avg_bits", "size_mb", "bitops"):
            assert p[key] == pytest.approx(costs[key], rel=1e-12)
        assert p["bitops"] <= p["budget"] * (1 + 1e-9)
    report = (out / "report.md").read_text()
    assert "Pareto front (allocate, cost bitops)" in report and "front 0" in report


def test_cli_target_bitops_with_act_choices_and_errors(demo_only, tmp_path, capsys):
    run = tmp_path / "wa"
    assert main(["allocate", "--proxy", "sensitivity", "--act-choices", "4", "6", "8", "--target-bitops", "1.0G",
                 "--bit-choices", "2", "4", "8", "--samples", "8", "--proxy-batch", "8", "--n-test", "20",
                 "--no-progress", "--out", str(run)]) == 0
    assert "GBitOps" in capsys.readouterr().out
    r = json.loads((run / "result.json").read_text())
    assert r["budget_bitops"] == 1e9 and r["budget_avg_bits"] is None and r["budget_size_mb"] is None
    assert r["bitops"] <= 1e9 * (1 + RTOL) and r["act_choices"] == [4, 6, 8]
    cfg = BitConfig.load(run / "config.json")
    assert r["input_bits"] == {n: cfg.acts[n] for n in cfg.weights} and set(r["input_bits"].values()) <= {4, 6, 8}
    from mixq.export.run import model_from_run

    task, qm, _ = model_from_run(run, n_test=20)
    assert r["bitops"] == CostModel.from_model(qm, tuple(task.calib.shape[1:])).of_config(cfg)["bitops"]
    assert qm.bit_config() == BitConfig(cfg.weights, {n: a for n, a in cfg.acts.items() if a != 8})

    # one error line, exit code 2, before the model and data are loaded
    assert main(["allocate", "--proxy", "hawq-v3", "--act-choices", "4", "8", "--no-progress",
                 "--out", str(tmp_path / "x")]) == 2
    assert "W/A allocation (--act-choices 4 8) needs --proxy sensitivity" in _one_error_line(capsys)
    assert main(["allocate", "--pareto", "--proxy", "bparams", "--act-choices", "4", "8", "--no-progress",
                 "--out", str(tmp_path / "y")]) == 2
    assert "needs --proxy sensitivity" in _one_error_line(capsys)
    assert main(["allocate", "--pareto", "--target-bits", "3", "--no-progress", "--out", str(tmp_path / "z")]) == 2
    assert "--pareto sweeps the whole cost range and takes no budget; drop --target-bits" in _one_error_line(capsys)
    assert main(["allocate", "--proxy", "bops", "--target-bitops", "1k", "--samples", "8", "--proxy-batch", "8",
                 "--n-test", "10", "--no-progress", "--out", str(tmp_path / "w")]) == 2
    err = _one_error_line(capsys)  # weight-only: the smallest configuration's BitOps at --act-bits
    assert "BitOps budget below the all-minimum-bits BitOps" in err and "GBitOps, budget 1e-06 GBitOps" in err


def test_pareto_calibrates_each_point_from_the_uncalibrated_model(demo_only, tmp_path):
    from mixq.evaluation.task import load_task

    task = load_task("resnet20-jpeg", samples=16, seed=0, n_test=40)
    common = {"cost": "mb", "points": 3, "front_points": 2, "bit_choices": (2, 4), "proxy_batch": 16,
              "uniform_bits": (4,), "progress": False}
    plain = run_allocation_pareto(task, "bparams", out=tmp_path / "a", **common)
    cal = run_allocation_pareto(task, "bparams", out=tmp_path / "b", calibrate_points=True,
                                calibration=CalibrationConfig(epochs=1, seed=0), **common)
    assert [p["top1"] for p in cal["front"]] == [p["top1"] for p in plain["front"]]
    assert cal["uniform"][0]["top1"] == plain["uniform"][0]["top1"]
    assert all("top1_calibrated" in p for p in cal["front"] + cal["uniform"])
    assert all("top1_calibrated" not in p for p in plain["front"]) and cal["calibration"]["epochs"] == 1
    assert cal["uniform"][0]["score"] is not None  # 4 bits is a candidate
    with pytest.raises(MixqError, match=r"the number of front points \(--front-points\) must be an integer"):
        run_allocation_pareto(task, "bparams", out=tmp_path / "c", **{**common, "front_points": 1})
