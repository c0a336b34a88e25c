"""EvoQ search: budget never exceeded, seeded determinism, guided mutation direction, resume."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from mixq.bits import Budget
from mixq.errors import MixqError
from mixq.evaluation.metrics import predict
from mixq.evoq.bitsearch import BitSpace, EvoQConfig, evoq_search
from mixq.evoq.evolution import EvolutionConfig, TournamentEvolution
from mixq.evoq.sensitivity import SensitivityTable, compute_sensitivity
from mixq.quant.model import QuantModel


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()


@pytest.fixture(scope="module")
def setup():
    net = _net()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    qm = QuantModel(net, calib=x)
    table = compute_sensitivity(qm, x, progress=False)
    return net, qm, x, predict(net, x), table


def test_sensitivity_table_shape_and_monotone(setup, tmp_path):
    _, qm, _, _, table = setup
    assert table.mse.shape == (len(qm.layer_names), 7)
    # more bits -> less error, for every layer (allowing float noise at the top)
    assert np.all(table.mse[:, 0] > table.mse[:, -1])
    table.save(tmp_path)
    back = SensitivityTable.from_dict(json.loads((tmp_path / "sensitivity.json").read_text()))
    np.testing.assert_allclose(back.mse, table.mse)
    assert (tmp_path / "sensitivity.csv").read_text().startswith("layer,params,mse_w2")


def test_sensitivity_on_ray_equals_serial(setup, ray_executor):
    _, qm, x, _, table = setup
    before = qm.bit_config()
    ray_table = compute_sensitivity(qm, x, progress=False, executor=ray_executor)
    assert ray_table.layers == table.layers and ray_table.bits == table.bits
    # an actor runs torch on one thread: sums may round in another order than here
    np.testing.assert_allclose(ray_table.mse, table.mse, rtol=1e-6, atol=0)
    assert qm.bit_config() == before


@pytest.mark.parametrize("mutation", ["guided", "random"])
@pytest.mark.parametrize("target", [2.5, 3.0, 4.7])
def test_budget_never_exceeded(setup, mutation, target):
    _, qm, x, ref, table = setup
    budget = Budget(avg_bits=target)
    cfg = EvoQConfig(iterations=60, mutation=mutation, seed=3)
    space = BitSpace(qm.layer_params, budget, cfg, table)
    seen = []
    search = TournamentEvolution(cfg.evolution(), lambda g: seen.append(g) or float(sum(g)),
                                 space.mutate, lambda rng: space.initial(int(target), rng, cfg.population))
    while not search.done:
        search.step()
    assert seen and all(qm.avg_bits(dict(zip(qm.layer_names, g))) <= target + 1e-9 for g in seen)
    res = evoq_search(qm, x, ref, budget, cfg, table, progress=False)
    assert res.avg_bits <= target + 1e-9 and qm.avg_bits() == res.avg_bits


def test_size_budget_and_infeasible(setup):
    _, qm, x, ref, table = setup
    mb = qm.size_mb(3)
    res = evoq_search(qm, x, ref, Budget(size_mb=mb), EvoQConfig(iterations=20), table, progress=False)
    assert res.size_mb <= mb
    with pytest.raises(MixqError, match="infeasible"):
        evoq_search(qm, x, ref, Budget(avg_bits=1.5), EvoQConfig(iterations=5), table, progress=False)


def test_same_seed_same_configuration(setup):
    _, qm, x, ref, table = setup
    runs = [evoq_search(qm, x, ref, Budget(avg_bits=3), EvoQConfig(iterations=40, seed=s), table, progress=False)
            for s in (7, 7, 8)]
    assert runs[0].config == runs[1].config and runs[0].best_history == runs[1].best_history
    assert runs[0].best_history != runs[2].best_history or runs[0].config != runs[2].config


def test_guided_mutation_follows_sensitivity():
    # layer 0 is very sensitive at its current width, layer 1 insensitive; equal sizes
    bits = (2, 3, 4, 5, 6, 7, 8)
    mse = np.array([[10.0 * 4.0 ** -(b - 2) for b in bits], [1e-4 * 4.0 ** -(b - 2) for b in bits],
                    [1e-1 * 4.0 ** -(b - 2) for b in bits]])
    table = SensitivityTable(("a", "b", "c"), bits, mse, (100, 100, 100))
    space = BitSpace([100, 100, 100], Budget(avg_bits=8), EvoQConfig(mutation="guided"), table)
    p = space.up_probability((4, 4, 4))
    assert p[0] > 0.8 and p[1] < 0.2 and p[1] < p[2] < p[0]
    rng = np.random.default_rng(0)
    moves = np.array([space.mutate((4, 4, 4), rng) for _ in range(400)]) - 4
    up_a, up_b = (moves[:, 0] > 0).sum(), (moves[:, 1] > 0).sum()
    down_a, down_b = (moves[:, 0] < 0).sum(), (moves[:, 1] < 0).sum()
    assert up_a > 3 * down_a and down_b > 3 * up_b
    # random mutation has no preferred direction
    rspace = BitSpace([100, 100, 100], Budget(avg_bits=8), EvoQConfig(mutation="random"), table)
    assert np.allclose(rspace.up_probability((4, 4, 4)), 0.5)


def test_guided_repair_lowers_the_cheapest_layer():
    bits = (2, 3, 4, 5, 6, 7, 8)
    mse = np.array([[1.0 * 2.0 ** -b for b in bits], [1e-3 * 2.0 ** -b for b in bits]])
    table = SensitivityTable(("a", "b"), bits, mse, (10, 10))
    space = BitSpace([10, 10], Budget(avg_bits=4), EvoQConfig(mutation="guided"), table)
    assert space.repair((5, 5), np.random.default_rng(0)) == (5, 3)


def test_resume_from_checkpoint(setup, tmp_path):
    _, qm, x, ref, table = setup
    ck = tmp_path / "state.json"
    full = evoq_search(qm, x, ref, Budget(avg_bits=3), EvoQConfig(iterations=30, seed=1), table, progress=False)
    evoq_search(qm, x, ref, Budget(avg_bits=3), EvoQConfig(iterations=30, seed=1), table, checkpoint=ck,
                checkpoint_every=10, progress=False)
    state = json.loads(ck.read_text())
    assert state["state"]["iteration"] == 30
    # an interrupted run (20 of 30 iterations) resumes to the same result; a finished run is extended
    ck.unlink()
    evoq_search(qm, x, ref, Budget(avg_bits=3), EvoQConfig(iterations=20, seed=1), table, checkpoint=ck,
                progress=False)
    resumed = evoq_search(qm, x, ref, Budget(avg_bits=3), EvoQConfig(iterations=30, seed=1), table,
                          checkpoint=ck, progress=False)
    assert resumed.config == full.config and resumed.best_history == full.best_history
    with pytest.raises(MixqError, match=r"other settings \(limit: "):
        evoq_search(qm, x, ref, Budget(avg_bits=3.5), EvoQConfig(iterations=30, seed=1), table,
                    checkpoint=ck, progress=False)


def test_child_equal_to_known_costs_no_evaluation():
    calls = []
    search = TournamentEvolution(EvolutionConfig(population=4, sample=2, iterations=50, seed=0),
                                 lambda g: calls.append(g) or float(g[0]),
                                 lambda g, rng: (int(rng.integers(3)),), lambda rng: [(0,), (1,), (2,)])
    while not search.done:
        search.step()
    assert len(calls) == len(set(calls)) == 3 and search.state.evaluations == 3


def test_sensitivity_table_files_round_trip_exactly(tmp_path):
    """Hard-coded table: JSON and CSV written exactly, signature stored, nested folders created, every field
    read back with its type; value() picks the right cell; a damaged file is one clear error."""
    mse = np.array([[0.5, 0.25, 0.125], [3.0, 2.0, 1.0]])
    table = SensitivityTable(("conv", "fc"), (2, 4, 8), mse, (27, 10))
    assert table.value(0, 4) == 0.25 and table.value(1, 8) == 1.0 and table.value(1, 2) == 3.0
    out = tmp_path / "a" / "b"
    table.save(out, signature={"seed": 3})
    data = json.loads((out / "sensitivity.json").read_text())
    assert data == {"signature": {"seed": 3}, "bits": [2, 4, 8],
                    "layers": {"conv": {"params": 27, "mse": [0.5, 0.25, 0.125]},
                               "fc": {"params": 10, "mse": [3.0, 2.0, 1.0]}}}
    assert (out / "sensitivity.csv").read_bytes() == (
        b"layer,params,mse_w2,mse_w4,mse_w8\r\nconv,27,0.5,0.25,0.125\r\nfc,10,3,2,1\r\n")
    table.save(tmp_path / "plain")
    assert "signature" not in json.loads((tmp_path / "plain" / "sensitivity.json").read_text())
    back = SensitivityTable.from_dict(data)
    assert back.layers == ("conv", "fc") and back.bits == (2, 4, 8) and back.params == (27, 10)
    assert back.mse.dtype == np.float64 and np.array_equal(back.mse, mse)
    ints = SensitivityTable.from_dict({"bits": ["2"], "layers": {"l": {"params": "5", "mse": [3]}}})
    assert ints.mse.dtype == np.float64 and ints.bits == (2,) and ints.params == (5,)
    with pytest.raises(MixqError, match="run/x.json is not a mixq sensitivity table: 'mse'"):
        SensitivityTable.from_dict({"bits": [2], "layers": {"conv": {"params": 1}}}, source="run/x.json")
