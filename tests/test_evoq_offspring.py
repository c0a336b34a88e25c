"""Generations of K children evaluated as one batch: the steady state unchanged at K=1, any evaluator
(here, a batch function, serial or Ray) giving the same search for the same seed and K, resumable."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from mixq.bits import Budget
from mixq.errors import MixqError
from mixq.evaluation.metrics import predict
from mixq.evoq.bitsearch import EvoQConfig, evoq_search, search_signature
from mixq.evoq.evolution import EvolutionConfig, TournamentEvolution
from mixq.evoq.sensitivity import compute_sensitivity
from mixq.executor import SerialExecutor
from mixq.quant.model import QuantModel


def _fitness(g):
    """A rugged deterministic fitness of a genome."""
    return float(np.sin(np.dot(g, np.arange(1, len(g) + 1))) + 0.1 * sum(g))


def _mutate(g, rng):
    child = np.asarray(g).copy()
    j = int(rng.integers(len(g)))
    child[j] = int(np.clip(child[j] + rng.choice([-1, 1]), 0, 5))
    return tuple(int(b) for b in child)


def _initial(rng):
    return [tuple(int(b) for b in rng.integers(0, 6, size=6))]


def _steady_state_reference(cfg):
    """The paper's Alg. 1 written out independently: one tournament, one child, per iteration."""
    rng = np.random.default_rng(cfg.seed)
    genomes = list(_initial(rng))
    while len(genomes) < cfg.population:
        genomes.append(_mutate(genomes[int(rng.integers(len(genomes)))], rng))
    cache = {}

    def fit(g):
        if g not in cache:
            cache[g] = _fitness(g)
        return cache[g]

    pop = [(g, fit(g)) for g in genomes]
    best = [min(cache.values())]
    for _ in range(cfg.iterations):
        idx = rng.choice(len(pop), size=cfg.sample, replace=False)
        ranked = sorted(idx, key=lambda i: pop[i][1])
        child = _mutate(pop[ranked[0]][0], rng)
        pop[ranked[-1]] = (child, fit(child))
        best.append(min(cache.values()))
    return pop, best, len(cache)


def _run(cfg, batched=False):
    batches = []

    def many(genomes):
        batches.append(list(genomes))
        return [_fitness(g) for g in genomes]

    search = TournamentEvolution(cfg, _fitness, _mutate, _initial, evaluate_many=many if batched else None)
    while not search.done:
        search.step()
    return search, batches


def test_one_child_per_generation_is_the_papers_steady_state():
    cfg = EvolutionConfig(population=8, sample=4, iterations=80, seed=5)
    pop, best, evaluations = _steady_state_reference(cfg)
    for batched in (False, True):
        search, _ = _run(cfg, batched)
        assert search.state.population == pop and search.state.best_history == best
        assert search.state.evaluations == evaluations


@pytest.mark.parametrize("k", [3, 7])
def test_generations_are_batches_and_any_evaluator_gives_the_same_search(k):
    cfg = EvolutionConfig(population=8, sample=4, iterations=40, seed=2, offspring=k)
    plain, _ = _run(cfg)
    batched, batches = _run(cfg, batched=True)
    assert batched.state.to_dict() == plain.state.to_dict()
    assert batched.state.iteration == 40 and len(batched.state.best_history) == 41
    # the initial population is one batch, then one batch per generation of at most k new genomes,
    # each evaluated once (a repeat inside a batch or of a cached genome costs nothing)
    assert len(batches[0]) <= cfg.population and all(1 <= len(b) <= k for b in batches[1:])
    flat = [g for b in batches for g in b]
    assert len(flat) == len(set(flat)) == batched.state.evaluations
    # another K is another search (the tournaments see the population at the start of the generation)
    assert batched.state.to_dict() != _run(EvolutionConfig(8, 4, 40, 2, offspring=1))[0].state.to_dict()


def test_last_generation_makes_only_the_missing_children_and_bad_offspring_is_refused():
    search, batches = _run(EvolutionConfig(population=6, sample=3, iterations=10, seed=0, offspring=4), True)
    assert search.state.iteration == 10 and len(search.state.best_history) == 11
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(MixqError, match="offspring"):
            EvolutionConfig(offspring=bad)
    with pytest.raises(MixqError, match="offspring"):
        EvoQConfig(offspring=0)


def test_a_short_batch_from_the_evaluator_is_caught():
    with pytest.raises(AssertionError, match="returned 3 fitnesses for 4 genomes"):
        TournamentEvolution(EvolutionConfig(4, 2, 4, 0, offspring=2), _fitness, _mutate, _initial,
                            evaluate_many=lambda gs: [0.0] * (len(gs) - 1))


# -- EvoQ on a small network -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    x = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    qm = QuantModel(net, calib=x)
    return qm, x, predict(net, x), compute_sensitivity(qm, x, progress=False)


def _search(setup, executor=None, checkpoint=None, iterations=24, offspring=3):
    qm, x, ref, table = setup
    return evoq_search(qm, x, ref, Budget(avg_bits=3), EvoQConfig(iterations=iterations, seed=4, offspring=offspring),
                       table, checkpoint=checkpoint, progress=False, executor=executor)


def _same(a, b, rtol=0.0):
    assert a.config == b.config and a.evaluations == b.evaluations and a.iterations == b.iterations
    np.testing.assert_allclose(a.best_history, b.best_history, rtol=rtol, atol=0)


def test_evoq_through_an_executor_equals_the_search_here(setup):
    here = _search(setup)
    _same(here, _search(setup, executor=SerialExecutor()))
    assert setup[0].bit_config() == here.config  # the model is left at the best configuration


def test_evoq_on_ray_equals_serial(setup, ray_executor):
    # an actor runs torch on one thread: MSEs may round differently in the last digits, the search is the same
    _same(_search(setup, executor=ray_executor), _search(setup), rtol=1e-6)


def test_batched_search_resumes_to_the_same_result(setup, tmp_path):
    full = _search(setup)
    ck = tmp_path / "state.json"
    _search(setup, checkpoint=ck, iterations=12)
    assert json.loads(ck.read_text())["state"]["iteration"] == 12
    _same(_search(setup, checkpoint=ck), full)
    # the checkpoint names the setting: another K is refused, K=1 checkpoints keep their old signature
    with pytest.raises(MixqError, match=r"settings.offspring: 3 -> 2"):
        _search(setup, checkpoint=ck, offspring=2)
    qm = setup[0]
    assert "offspring" not in search_signature(qm.layer_names, 1.0, EvoQConfig())["settings"]
    assert search_signature(qm.layer_names, 1.0, EvoQConfig(offspring=2))["settings"]["offspring"] == 2
