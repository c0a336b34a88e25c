"""Activation bits as genes, BitOps and MB budgets: costs by hand, brute-force optima, CLI and ONNX export."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import TinyNet

from mixq.bits import BitConfig, Budget
from mixq.cli import main
from mixq.errors import MixqError
from mixq.evaluation.metrics import output_mse
from mixq.evoq.bitsearch import BitSpace, EvoQConfig, evoq_search
from mixq.evoq.sensitivity import compute_act_sensitivity, compute_sensitivity
from mixq.quant.cost import CostModel, parse_count
from mixq.quant.model import QuantModel
from mixq.quant.replay import PrefixCache

MACS, PARAMS = TinyNet.MACS, TinyNet.PARAMS


def test_cost_model_by_hand(tiny):
    _, qm, _, _ = tiny
    cm = CostModel.from_model(qm, (3, 8, 8))
    assert list(cm.macs) == MACS and list(cm.params) == PARAMS
    w, a = [2, 5, 8], [4, 6, 8]
    assert cm.bitops(w, a) == sum(m * b * c for m, b, c in zip(MACS, w, a))
    assert cm.bitops(4) == sum(MACS) * 4 * 8  # inputs default to the model's 8 bits
    assert cm.size_mb(w) == pytest.approx(qm.size_mb(dict(zip(qm.layer_names, w))))
    assert cm.avg_bits(w) == pytest.approx(qm.avg_bits(dict(zip(qm.layer_names, w))))
    cfg = BitConfig(dict(zip(qm.layer_names, w)), dict(zip(qm.layer_names, a)))
    assert cm.of_config(cfg)["bitops"] == cm.bitops(w, a)
    assert cm.cost_of("mb", w) == cm.size_mb(w) and cm.cost_of("bits", w) == cm.avg_bits(w)
    with pytest.raises(MixqError, match="cost must be one of"):
        cm.cost_of("watts", w)
    with pytest.raises(MixqError, match="one bit-width per layer"):
        cm.bitops([2, 3])
    assert cm.cost_range("bitops", (3, 2, 6), (8, 4)) == (sum(MACS) * 2 * 4, sum(MACS) * 6 * 8)
    assert cm.cost_range("bits", (2, 8)) == (2.0, 8.0)
    assert cm.cost_range("bitops", (2, 8)) == (sum(MACS) * 2 * 8, sum(MACS) * 8 * 8)


def test_parse_count_and_budget():
    assert parse_count("1.5G") == 1.5e9 and parse_count("200M") == 2e8 and parse_count("3e4") == 3e4
    assert parse_count(7) == 7.0 and parse_count(" 2 k ") == 2000.0
    for bad in ("abc", "-1G", "0", "1.2X", "nan"):
        with pytest.raises(MixqError, match="--target-bitops"):
            parse_count(bad, "--target-bitops")
    b = Budget(bitops=1e9)
    assert b.max_bit_params(100) == float("inf") and b.max_bitops == 1e9 and "BitOps" in b.text()
    assert Budget(avg_bits=3).to_dict() == {"avg_bits": 3, "size_mb": None}  # older signatures unchanged
    with pytest.raises(MixqError, match="BitOps"):
        Budget(bitops=-5)
    with pytest.raises(MixqError, match="needs an average"):
        Budget()


def test_infeasible_budget_names_the_smallest_achievable_value(tiny):
    _, qm, _, _ = tiny
    cm = CostModel.from_model(qm, (3, 8, 8))
    least = cm.bitops(2, 4)
    with pytest.raises(MixqError, match=f"smallest achievable {least:.6g} BitOps"):
        cm.check_budget(Budget(bitops=least * 0.99), 2, (4, 8))
    cm.check_budget(Budget(bitops=least), 2, (4, 8))
    with pytest.raises(MixqError, match=f"smallest achievable {cm.size_mb(2):.4f} MB"):
        cm.check_budget(Budget(size_mb=cm.size_mb(2) / 2), 2)
    with pytest.raises(MixqError, match="infeasible"):
        BitSpace(PARAMS, Budget(bitops=least * 0.99), EvoQConfig(mutation="random", act_choices=(4, 8)), macs=MACS)
    with pytest.raises(MixqError, match="MACs"):
        BitSpace(PARAMS, Budget(bitops=1e9), EvoQConfig(mutation="random"))


def test_act_choices_are_checked():
    for bad in ((8,), (4, 4), (1, 8), (4, 9)):
        with pytest.raises(MixqError, match="activation bit choices"):
            EvoQConfig(act_choices=bad)
    assert EvoQConfig(act_choices=(8, 4, 6)).act_choices == (4, 6, 8)


def test_set_bits_tuple_with_input_bits_and_prefix_replay_is_exact(tiny):
    _, qm, x, _ = tiny
    qm.set_bits_tuple((3, 4, 5, 4, 6, 8))
    assert qm.bit_config().weights == {"c1": 3, "c2": 4, "fc": 5}
    assert dict(qm.bit_config().acts) == {"c1": 4, "c2": 6}  # fc at the default 8
    with pytest.raises(MixqError, match="expected 3 bit-widths"):
        qm.set_bits_tuple((3, 4))
    cache = PrefixCache(qm, x, max_mb=64)
    rng = np.random.default_rng(0)
    for _ in range(25):
        g = tuple(int(v) for v in rng.integers(2, 9, 3)) + tuple(int(v) for v in rng.choice([4, 6, 8], 3))
        got = cache(g)
        qm.set_bits_tuple(g)
        assert torch.equal(got, qm(x))
    assert cache.replayed > 0  # prefixes were reused (same first-layer genes recur)
    qm.set_bits(32)


def test_act_sensitivity_row_by_hand(tiny):
    _, qm, x, _ = tiny
    table = compute_act_sensitivity(qm, x, bits=(4, 6), progress=False)
    qm.set_bits(32)
    ref = qm(x)
    for j, name in enumerate(qm.layer_names):
        for k, b in enumerate((4, 6)):
            qm.layers[name].input_quantizer.bits = b
            assert table.mse[j, k] == pytest.approx(output_mse(qm(x), ref), rel=1e-6)
            qm.layers[name].input_quantizer.bits = 8
    assert (table.mse[:, 0] >= table.mse[:, 1]).all()  # 4 bits is worse than 6 on every layer here


@pytest.mark.parametrize("mutation", ["guided", "random"])
def test_repair_and_mutation_stay_within_both_limits(mutation, tiny):
    _, qm, x, _ = tiny
    table = compute_sensitivity(qm, x, progress=False)
    acts = compute_act_sensitivity(qm, x, bits=(4, 6, 8), progress=False)
    cm = CostModel.from_model(qm, (3, 8, 8))
    rng = np.random.default_rng(0)
    for _ in range(30):
        budget = Budget(avg_bits=float(rng.uniform(2, 6)), bitops=float(rng.uniform(cm.bitops(2, 4), cm.bitops(8, 8))))
        space = BitSpace(PARAMS, budget, EvoQConfig(mutation=mutation, act_choices=(4, 6, 8)), table, MACS, acts)
        g = tuple(int(v) for v in rng.integers(2, 9, 3)) + tuple(int(v) for v in rng.choice([4, 6, 8], 3))
        fixed = space.repair(g, rng)
        assert space.feasible(fixed) and all(f <= o for f, o in zip(fixed, g))
        assert space.feasible(space.mutate(fixed, rng))
        assert all(space.feasible(p) for p in space.initial(space.uniform_bits(), rng, 6))


def test_search_finds_the_brute_force_optimum_under_a_bitops_budget(tiny):
    """3 layers x weights 2..4 x inputs {4, 8}: 216 configurations, best output MSE by enumeration."""
    model, qm, x, ref = tiny
    cm = CostModel.from_model(qm, (3, 8, 8))
    budget = Budget(bitops=cm.bitops(3, 6))
    best, best_mse = None, float("inf")
    for w in itertools.product((2, 3, 4), repeat=3):
        for a in itertools.product((4, 8), repeat=3):
            if cm.bitops(w, a) <= budget.bitops:
                qm.set_bits_tuple(w + a)
                mse = output_mse(qm(x), ref)
                if mse < best_mse:
                    best, best_mse = w + a, mse
    table = compute_sensitivity(qm, x, progress=False)
    acts = compute_act_sensitivity(qm, x, bits=(4, 8), progress=False)
    cfg = EvoQConfig(iterations=300, min_bits=2, max_bits=4, act_choices=(4, 8), mutation_prob=0.3, seed=0)
    r = evoq_search(qm, x, ref, budget, cfg, sensitivity=table, cost=cm, act_sensitivity=acts, progress=False)
    assert r.config.bits_tuple(qm.layer_names) + tuple(r.config.acts[n] for n in qm.layer_names) == best
    assert r.fitness == pytest.approx(best_mse, rel=1e-6) and r.bitops <= budget.bitops
    # weight genes only, the same budget: inputs stay at 8 bits, so the weights must shrink instead
    w_only = evoq_search(qm, x, ref, budget, EvoQConfig(iterations=200, min_bits=2, max_bits=4, seed=0),
                         sensitivity=table, cost=cm, progress=False)
    assert not w_only.config.acts and w_only.bitops <= budget.bitops and w_only.fitness >= r.fitness


def test_cli_act_genes_and_bitops_budget(demo_only, tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["evoq", "--act-choices", "4", "6", "8", "--target-bitops", "0.8G", "--iterations", "60", "--samples", "16",
            "--n-test", "100", "--no-calibrate", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert "GBitOps" in capsys.readouterr().out
    r = json.loads((out / "result.json").read_text())
    assert r["target_bitops"] == 0.8e9 and r["bitops"] <= 0.8e9 and r["act_choices"] == [4, 6, 8]
    cfg = BitConfig.load(out / "config.json")
    cm = CostModel(tuple(r["layers"]), tuple(r["params"]), tuple(r["macs"]), 8)
    assert cm.of_config(cfg)["bitops"] == pytest.approx(r["bitops"])
    assert [cfg.acts[n] for n in r["layers"]] == r["input_bits"]
    assert (out / "act_sensitivity.json").exists() and (out / "act_sensitivity.csv").read_text().startswith(
        "layer,params,mse_a4")
    assert r["uniform_bitops"] <= 0.8e9
    # MB budget through its new name; a weight-only config file keeps its plain form
    assert main(["evoq", "--target-mb", "0.09", "--iterations", "20", "--samples", "16", "--n-test", "50",
                 "--no-calibrate", "--no-progress", "--out", str(tmp_path / "mb")]) == 0
    r = json.loads((tmp_path / "mb" / "result.json").read_text())
    assert r["size_mb"] <= 0.09 and all(isinstance(v, int) for v in json.loads(
        (tmp_path / "mb" / "config.json").read_text()).values())
    capsys.readouterr()
    for flags, message in [(["--target-bitops", "0.1G", "--act-choices", "4", "8"], "smallest achievable"),
                           (["--target-bitops", "lots"], "--target-bitops must be a positive number"),
                           (["--act-choices", "8"], "activation bit choices")]:
        assert main(["evoq", *flags, "--no-progress", "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


def test_onnx_export_of_a_weight_and_activation_mixed_model(tiny, tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    from mixq.export import compare_outputs, export_onnx

    model, _, x, _ = tiny
    qm = QuantModel(model, calib=x)
    qm.set_bits(BitConfig({"c1": 4, "c2": 3, "fc": 8}, {"c1": 8, "c2": 4, "fc": 6}))
    path = tmp_path / "wa.onnx"
    export_onnx(qm, path, (3, 8, 8))
    batches = [(x[i:i + 8], torch.zeros(8, dtype=torch.long)) for i in range(0, 16, 8)]
    v = compare_outputs(path, qm, iter(batches), progress=False)
    assert v["ort_noopt_mean_abs_logit_diff"] < 1e-3 and v["ort_noopt_argmax_agreement"] == 1.0
    qm8 = QuantModel(model, calib=x)
    qm8.set_bits(BitConfig({"c1": 4, "c2": 3, "fc": 8}))  # the same weights, inputs all 8-bit: far off
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(qm8(x).numpy() - got).mean() > 10 * v["ort_noopt_mean_abs_logit_diff"]
