"""EMQ formulas: operations against independent references, genotypes, the interpreter, sources, screening
and the seeded, resumable search."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import special, stats
from torch import nn

from mixq.emq import FormulaProxy, Genotype, compute_inputs, crossover, mutate, random_genotype
from mixq.emq.inputs import PerturbedInputs
from mixq.emq.interpret import FormulaError, check_shapes, gain_table, layer_values
from mixq.emq.ops import BINARY, UNARY, ShapeError, binary_shape, unary_shape
from mixq.emq.proxy import resolve_proxy
from mixq.emq.search import EMQConfig, FormulaFitness, SearchState, run_search
from mixq.errors import MixqError
from mixq.proxies import stats_for
from mixq.quant.model import QuantModel


def tree(a, ua, b, ub, binary="mul", reduce="sum", aggregate="bits", sign=1):
    return Genotype("tree", (a, b), (tuple(ua), tuple(ub)), binary, reduce, aggregate, sign)


# -- operations --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_shape_rule_matches_result(name):
    x = torch.rand(3, 4, 5) + 0.1
    out = UNARY[name].fn(x)
    assert tuple(out.shape) == unary_shape(name, tuple(x.shape))


def test_unary_values_against_references():
    g = np.random.default_rng(0)
    a = g.normal(size=(4, 6)).astype(np.float32)
    t = torch.from_numpy(a)
    np.testing.assert_allclose(UNARY["softmax"].fn(t).numpy(), special.softmax(a), rtol=1e-5)
    np.testing.assert_allclose(UNARY["logsoftmax"].fn(t).numpy(), special.log_softmax(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(UNARY["normalize"].fn(t).numpy(), stats.zscore(a, axis=None), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(UNARY["std"].fn(t).item(), np.std(a), rtol=1e-5)
    np.testing.assert_allclose(UNARY["frobenius"].fn(t).item(), np.linalg.norm(a), rtol=1e-5)
    np.testing.assert_allclose(UNARY["l1"].fn(t).item(), np.abs(a).sum(), rtol=1e-5)
    mm = UNARY["minmax"].fn(t).numpy()
    assert mm.min() == 0 and mm.max() == pytest.approx(1)
    assert np.isnan(UNARY["log"].fn(torch.tensor([-1.0])).item())  # domain error -> NaN, screened later


def test_binary_values_against_references():
    g = np.random.default_rng(1)
    a, b = g.normal(size=(3, 5)).astype(np.float32), g.normal(size=(3, 5)).astype(np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    pa, pb = special.softmax(a.ravel()), special.softmax(b.ravel())
    np.testing.assert_allclose(BINARY["kl"].fn(ta, tb).item(), stats.entropy(pa, pb), rtol=1e-4)
    cos = (a.ravel() @ b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b)
    np.testing.assert_allclose(BINARY["cosine"].fn(ta, tb).item(), cos, rtol=1e-5)
    np.testing.assert_allclose(BINARY["hamming"].fn(ta, tb).item(), np.mean(np.sign(a) != np.sign(b)))
    np.testing.assert_allclose(BINARY["mse"].fn(ta, tb).item(), np.mean((a - b) ** 2), rtol=1e-5)
    np.testing.assert_allclose(BINARY["l1dist"].fn(ta, tb).item(), np.abs(a - b).sum(), rtol=1e-5)
    np.testing.assert_allclose(BINARY["l2dist"].fn(ta, tb).item(), np.linalg.norm(a - b), rtol=1e-5)
    np.testing.assert_allclose(BINARY["matmul"].fn(ta, tb).numpy(), a @ b.T, rtol=1e-5, atol=1e-6)


_SHAPE_CASES = [((4, 3, 2), (4, 3, 2)), ((4, 3, 2), ()), ((4, 6), (5, 6)), ((4, 6), (2, 7)),
                ((8, 2, 3, 3), (5, 2)), ((), ()), ((3, 4), (12,)), ((2, 3), (2, 3)), ((2, 3, 2), (5, 6))]
# expected result shape per kind and case, written out by hand (None = rejected before computing):
# elementwise needs equal shapes or a scalar; matmul needs rank >= 2 and equal row lengths (rows x rows);
# a distance needs equal element counts of at least 2 and gives a scalar
_EXPECTED = {
    "elementwise": [(4, 3, 2), (4, 3, 2), None, None, None, (), None, (2, 3), None],
    "matmul": [(4, 4), None, (4, 5), None, None, None, None, (2, 2), (2, 5)],
    "distance": [(), None, None, None, None, None, (), (), None],
}


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("case", range(len(_SHAPE_CASES)))
def test_binary_shape_rule_agrees_with_computation(name, case):
    sa, sb = _SHAPE_CASES[case]
    want = _EXPECTED[BINARY[name].kind][case]
    a, b = torch.rand(sa) + 0.1, torch.rand(sb) + 0.1
    if want is None:
        with pytest.raises(ShapeError):
            binary_shape(name, sa, sb)
        return
    assert binary_shape(name, sa, sb) == want
    assert tuple(BINARY[name].fn(a, b).shape) == want


# -- genotypes -----------------------------------------------------------------------------------------
def test_genotype_json_round_trip_and_formula(tmp_path):
    g = tree("hessian", ["abs", "identity"], "qerror", ["square", "identity"], "mul", "sum", "direct", -1)
    path = tmp_path / "g.json"
    g.save(path)
    assert Genotype.load(path) == g
    assert g.formula() == "S(b) = -sum_l sum(|H| * (Q_b)^2)"
    assert json.loads(path.read_text())["formula"] == g.formula()
    lin = Genotype("linear", ("weight",), (("abs", "log", "mean", "identity"),), None, "sum", "noise", 1)
    assert Genotype.from_dict(lin.to_dict()) == lin
    assert "mean(log(|W|))" in lin.formula()


@pytest.mark.parametrize("patch,match", [
    ({"format": "x"}, "not an EMQ genotype"), ({"version": 9}, "version"),
    ({"unary": [["nope", "abs"], ["abs", "abs"]]}, "unknown unary"),
    ({"binary": "pow"}, "unknown binary"), ({"inputs": ["act"]}, "needs 2 input"), ({"sign": 0}, "sign"),
    ({"aggregate": "cube"}, "aggregation"),
])
def test_genotype_validation(patch, match):
    d = tree("act", ["abs", "mean"], "weight", ["abs", "mean"]).to_dict()
    d.update(patch)
    with pytest.raises(MixqError, match=match):
        Genotype.from_dict(d)


def test_genotype_file_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MixqError, match="not valid JSON"):
        Genotype.load(tmp_path / "bad.json")
    with pytest.raises(MixqError, match="cannot read"):
        Genotype.load(tmp_path / "missing.json")


def test_canonical_form_detects_equivalent_formulas():
    a = tree("grad", ["identity", "abs"], "weight", ["square", "abs"], "mul")
    b = tree("weight", ["square", "identity"], "grad", ["abs", "abs"], "mul")  # swapped operands, no-ops
    assert a.key() == b.key()
    c = tree("grad", ["identity", "abs"], "weight", ["square", "abs"], "sub")  # not commutative
    d = tree("weight", ["square", "identity"], "grad", ["abs", "abs"], "sub")
    assert c.key() != d.key()
    # the reduction is irrelevant once the combined value is a scalar
    e = tree("grad", ["abs", "mean"], "weight", ["abs", "mean"], "add", reduce="mean")
    f = tree("grad", ["abs", "mean"], "weight", ["abs", "mean"], "add", reduce="l1")
    assert e.key() == f.key()


def test_variation_is_seeded_and_valid():
    def run(seed):
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(50):
            a, b = random_genotype(rng), random_genotype(rng)
            child = mutate(crossover(a, b, rng), rng)
            out.append(child)
        return out

    first = run(3)
    assert first == run(3) and first != run(4)
    rng = np.random.default_rng(0)
    g = random_genotype(rng)
    assert all(mutate(g, rng).genes() != g.genes() for _ in range(30))


# -- sources and the interpreter ---------------------------------------------------------------------
class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = _Mlp().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    return model, x, y


def test_hessian_diagonal_matches_exact(mlp):
    model, x, y = mlp
    w = model.fc1.weight

    def loss(flat):
        return F.cross_entropy(torch.func.functional_call(model, {"fc1.weight": flat.reshape(w.shape)}, (x,)), y)

    exact = torch.diagonal(torch.autograd.functional.hessian(loss, w.detach().reshape(-1))).reshape(w.shape)
    inp = compute_inputs(model, ["fc1", "fc2"], x, y, sources=["hessian"], hessian_samples=3000, seed=0)
    est = inp.tensors["hessian"][0].double()
    # Hutchinson diagonal: error ~ off-diagonal mass / sqrt(samples)
    assert torch.allclose(est, exact, atol=0.05 * exact.abs().max().item())
    assert torch.corrcoef(torch.stack([est.reshape(-1), exact.reshape(-1)]))[0, 1] > 0.98


def test_gradient_and_virtual_gradient_sources(mlp):
    model, x, y = mlp
    inp = compute_inputs(model, ["fc1", "fc2"], x, y, sources=["grad", "vgrad", "act", "weight"])
    ref = torch.autograd.grad(F.cross_entropy(model(x), y), [model.fc1.weight])[0]
    assert torch.allclose(inp.tensors["grad"][0], ref.float(), atol=1e-6)
    # closed form: d sum(fc2(tanh(fc1(1)))) / d W2[i, j] = tanh(fc1(1))_j for every output i
    h = torch.tanh(model.fc1(torch.ones(1, 4, dtype=torch.float64)))[0]
    assert torch.allclose(inp.tensors["vgrad"][1], h.expand(3, 5).float(), atol=1e-6)
    assert inp.tensors["act"][0].shape == (16, 5)
    assert not any(p.requires_grad is False for p in model.parameters())  # left as it was


def test_output_error_source_matches_hand_computation(mlp):
    from mixq.quant.ranges import quantize_weight_with

    model, x, y = mlp
    inp = compute_inputs(model, ["fc1", "fc2"], x, None, sources=["oerror"], act_samples=8)
    assert "oerror" in inp.sources and "qerror" in inp.sources
    w = model.fc2.weight.detach()
    h = torch.tanh(model.fc1(x[:8])).detach()
    want = h @ (quantize_weight_with(w, 3, "minmax") - w).T
    assert torch.allclose(inp.get("oerror", 1, 3).double(), want, atol=1e-5)
    assert inp.shape("oerror", 1) == (8, 3) and inp.get("oerror", 1, 32).abs().max() == 0


def test_network_error_source_matches_hand_computation(mlp):
    import copy

    from mixq.quant.ranges import quantize_weight_with

    model, x, y = mlp
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inp = compute_inputs(model, ["fc1", "fc2"], x, None, sources=["nerror"], act_samples=8)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.fc1.weight.copy_(quantize_weight_with(ref.fc1.weight, 2, "minmax"))
    want = ref(x[:8]) - model(x[:8])
    assert torch.allclose(inp.get("nerror", 0, 2).double(), want, atol=1e-5)
    assert inp.shape("nerror", 0) == (8, 3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # weights restored


def test_labels_required_for_grad_sources(mlp):
    model, x, _ = mlp
    with pytest.raises(MixqError, match="needs labels"):
        compute_inputs(model, ["fc1"], x, None, sources=["grad"])
    with pytest.raises(MixqError, match="unknown formula source"):
        compute_inputs(model, ["fc1"], x, None, sources=["curvature"])


@pytest.fixture(scope="module")
def tiny():
    from tests.test_proxies import _TinyConv

    torch.manual_seed(0)
    model = _TinyConv().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    qm = QuantModel(model, calib=x)
    inputs = compute_inputs(qm, qm.layer_names, x, y, seed=0)
    return qm, x, y, inputs


def test_interpreter_matches_hand_computation(tiny):
    qm, x, y, inputs = tiny
    g = tree("hessian", ["abs", "identity"], "qerror", ["square", "identity"], "mul", "sum", "direct", -1)
    bits = [2, 3, 8]
    values = layer_values(g, inputs, bits)
    for i, m in enumerate(qm.layers.values()):
        for k, b in enumerate(bits):
            from mixq.quant.ranges import quantize_weight_with

            w = m.weight.detach()
            q = quantize_weight_with(w, b, "minmax")
            want = float((inputs.tensors["hessian"][i].abs() * (q - w) ** 2).sum())
            assert values[i, k] == pytest.approx(want, rel=1e-5)
    gains = gain_table(g, values, bits)
    assert np.allclose(gains, -values)
    lin = Genotype("linear", ("weight",), (("abs", "mean", "identity", "identity"),), None, "sum", "bits", 1)
    v = layer_values(lin, inputs, [2, 4])
    w0 = inputs.tensors["weight"][0].abs().mean().item()
    assert v[0, 0] == v[0, 1] == pytest.approx(w0)
    assert np.allclose(gain_table(lin, v, [2, 4])[:, 1], 4 * v[:, 1])


def test_static_shape_check(tiny):
    _, _, _, inputs = tiny
    with pytest.raises(FormulaError) as err:
        check_shapes(tree("act", ["abs", "identity"], "weight", ["abs", "identity"], "add"), inputs)
    assert err.value.reason == "shape"
    check_shapes(tree("act", ["abs", "mean"], "weight", ["abs", "identity"], "add"), inputs)  # scalar broadcasts


def test_formula_proxy_scores_and_costs(tiny):
    qm, x, y, _ = tiny
    g = tree("hessian", ["abs", "identity"], "qerror", ["square", "identity"], "mul", "sum", "direct", -1)
    proxy = FormulaProxy(g)
    st = stats_for(qm, proxy, x, y, seed=0)
    rng = np.random.default_rng(0)
    bits = rng.integers(2, 9, size=(20, len(qm.layer_names)))
    scores = proxy.score(st, bits)
    costs = proxy.layer_costs(st, list(range(2, 9)))
    np.testing.assert_allclose(scores, -costs[np.arange(bits.shape[1]), bits - 2].sum(axis=1))
    # more bits -> smaller quantization error -> higher score for this formula
    assert proxy.score(st, np.full((1, bits.shape[1]), 8))[0] > proxy.score(st, np.full((1, bits.shape[1]), 2))[0]


def test_network_error_proxy_leaves_quant_model_as_it_was(tiny):
    qm, x, y, _ = tiny
    qm.set_bits({n: b for n, b in zip(qm.layer_names, [8, 3, 2])})
    before_cfg = qm.bit_config()
    before = {k: v.clone() for k, v in qm.state_dict().items()}
    out_before = qm(x)
    g = Genotype("linear", ("nerror",), (("square", "mean", "identity", "identity"),), None, "sum", "direct", -1)
    proxy = FormulaProxy(g)
    st = stats_for(qm, proxy, x, y, seed=0)
    assert qm.bit_config() == before_cfg
    assert all(torch.equal(v, qm.state_dict()[k]) for k, v in before.items())
    assert torch.equal(qm(x), out_before)
    # more bits -> smaller network error -> higher score, for every layer
    costs = proxy.layer_costs(st, [2, 4, 8])
    assert np.all(costs[:, 0] >= costs[:, 1]) and np.all(costs[:, 1] >= costs[:, 2])


def test_resolve_proxy(tmp_path):
    g = tree("act", ["abs", "mean"], "weight", ["abs", "mean"], "add")
    g.save(tmp_path / "g.json")
    assert isinstance(resolve_proxy(str(tmp_path / "g.json")), FormulaProxy)
    assert resolve_proxy("snip").name == "snip"
    with pytest.raises(MixqError, match="unknown proxy"):
        resolve_proxy("nope")


# -- screening and search ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitness(tiny):
    qm, _, _, inputs = tiny
    rng = np.random.default_rng(0)
    n_layers = len(qm.layer_names)
    bits = rng.integers(2, 5, size=(60, n_layers))
    # a synthetic "accuracy": a known additive function of the bits plus a little noise
    w = np.array([inputs.tensors["weight"][i].abs().mean().item() for i in range(n_layers)])
    acc = (np.log2(bits) * w).sum(axis=1) + rng.normal(scale=1e-3, size=60)
    return FormulaFitness(inputs, bits, acc, "kendall")


def test_screening_reasons(fitness):
    state = SearchState()
    cases = {
        "bit-blind": tree("act", ["abs", "mean"], "weight", ["abs", "mean"], "add", aggregate="direct"),
        "shape": tree("act", ["abs", "identity"], "weight", ["abs", "identity"], "add"),
        "probe": tree("weight", ["log", "identity"], "grad", ["identity", "identity"], "add"),
    }
    for reason, g in cases.items():
        out = fitness.evaluate(g, state)
        assert out.reason == reason and out.fitness == float("-inf")
    good = tree("weight", ["abs", "mean"], "weight", ["abs", "mean"], "add", aggregate="log-bits")
    first = fitness.evaluate(good, state)
    assert first.reason is None and first.fitness > 0.9
    # mean and normsum compute the same value: another canonical form, the same gain table
    again = fitness.evaluate(tree("weight", ["abs", "normsum"], "weight", ["abs", "normsum"], "add",
                                  aggregate="log-bits"), state)
    assert state.screened["duplicate"] == 0 and again.reason == "equivalent"  # same gains, other canonical form
    fitness.evaluate(good, state)
    assert state.screened["duplicate"] == 1 and state.screened["equivalent"] == 1


def test_perturbed_inputs_are_seeded_small_and_shape_preserving(tiny):
    inputs = tiny[3]
    a, b = PerturbedInputs(inputs), PerturbedInputs(inputs)
    for src, bits in (("weight", None), ("qerror", 3), ("nerror", 2)):
        x, xa = inputs.get(src, 1, bits), a.get(src, 1, bits)
        assert xa.shape == x.shape and torch.equal(xa, b.get(src, 1, bits))  # same noise in every instance
        rel = (xa - x)[x != 0] / x[x != 0]
        assert 0.5e-5 < float(rel.std()) < 2e-5 and float(rel.abs().max()) < 1e-4
    assert a.sources == inputs.sources and a.layer_names == inputs.layer_names


def test_unstable_screen_rejects_rounding_noise_and_keeps_real_signal(tiny, fitness):
    inputs = tiny[3]
    # mean(znorm(Q_b)) is 0 up to float rounding: its ranking of configurations is noise
    noise = Genotype("linear", ("qerror",), (("normalize", "mean", "identity", "identity"),), None, "sum",
                     "direct", 1)
    values = layer_values(noise, inputs, fitness.bit_values)
    assert np.all(np.abs(values) < 1e-6) and np.ptp(values) > 0
    bits = np.array(fitness.bit_values)[fitness.cols]
    off = FormulaFitness(inputs, bits, fitness.accuracy, "kendall", stability=0)
    assert off.assess(noise)[1] is None  # without the check it would be scored
    out = fitness.evaluate(noise, SearchState())
    assert out.reason == "unstable" and out.fitness == float("-inf")
    good = tree("weight", ["abs", "mean"], "weight", ["abs", "mean"], "add", aggregate="log-bits")
    assert fitness.assess(good)[0] == off.assess(good)[0] > 0.9  # a real signal passes, with the same fitness


def test_search_same_seed_same_genotype_and_finds_target(fitness):
    cfg = EMQConfig(candidates=300, population=16, seed=5)
    a = run_search(cfg, fitness, progress=False)
    b = run_search(cfg, fitness, progress=False)
    assert a.best() == b.best() and a.history == b.history
    assert a.best()[1] > 0.9  # the synthetic target is reachable
    c = run_search(EMQConfig(candidates=300, population=16, seed=6), fitness, progress=False)
    assert c.history != a.history


def test_search_resume_is_identical(fitness, tmp_path):
    cfg = EMQConfig(candidates=200, population=12, seed=1, checkpoint_every=5)
    full = run_search(cfg, fitness, progress=False)
    path = tmp_path / "state.json"
    seen = []

    def stop(state):
        seen.append(state.candidates)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, fitness, path, progress=False, on_checkpoint=stop)
    resumed = run_search(cfg, fitness, path, progress=False)
    assert resumed.best() == full.best() and resumed.history == full.history
    assert resumed.candidates == full.candidates and dict(resumed.screened) == dict(full.screened)
    with pytest.raises(MixqError, match="other settings"):
        run_search(EMQConfig(candidates=200, population=12, seed=2), fitness, path, progress=False)
    path.write_text("{broken")
    with pytest.raises(MixqError, match="corrupt"):
        run_search(cfg, fitness, path, progress=False)


@pytest.mark.parametrize("kwargs,match", [({"population": 1}, "population"), ({"metric": "pearson"}, "metric"),
                                          ({"train_fraction": 1.0}, "train fraction"),
                                          ({"structures": ("graph",)}, "structures"),
                                          ({"candidates": 5}, "candidates")])
def test_config_validation(kwargs, match):
    with pytest.raises(MixqError, match=match):
        EMQConfig(**kwargs)
