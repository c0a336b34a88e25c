"""The whole accuracy-cost trade-off in one EvoQ run: a non-dominated front of (output MSE, cost).

Instead of one search per budget, one population evolves under two objectives, both minimised: the
fitness (EvoQ eq. 3, output MSE on the calibration samples) and a cost (average weight bits, MB or BitOps;
:class:`~mixq.quant.cost.CostModel`). Selection is NSGA-II's (Deb et al. 2002), steady state by default:

- parents: binary tournaments on (non-domination rank, then larger crowding distance);
- children: EvoQ's mutation (:class:`~mixq.evoq.bitsearch.BitSpace`: sensitivity-guided, weight and, with
  ``act_choices``, activation genes), repaired into an optional cap budget;
- survivors: the population and the children ranked by non-dominated sorting, the last rank admitted
  filled by crowding distance; a genome already in the population is never admitted twice.

The initial population holds every uniform configuration (each weight bit-width, with each activation
choice) plus mutations of them, so the front starts by covering the whole cost range and can only improve
on the uniform points. The sensitivity tables, the fitness cache and the prefix cache serve every budget
at once. The front reported is the non-dominated set of *every* configuration evaluated (the archive),
which holds the population's front and anything it lost along the way.

    result = pareto_search(qm, x, reference, cost_model, "bitops", EvoQConfig(population=32, iterations=2000),
                           sensitivity=table)
    result.front        # [(genome, fitness, cost), ...] cheapest first
    result.at(1.2e9)    # the best front point within a budget of that cost
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mixq.bits import BitConfig, Budget
from mixq.errors import MixqError
from mixq.evoq.bitsearch import (
    BitSpace,
    EvoQConfig,
    FitnessEvaluator,
    _evolve,
    _SearchCheckpoint,
    search_signature,
)
from mixq.evoq.evolution import EvolutionConfig, EvolutionState, Genome, TournamentEvolution
from mixq.evoq.sensitivity import SensitivityTable
from mixq.executor import Executor, SerialExecutor
from mixq.pareto import crowding_distance, nondominated_ranks, pareto_indices
from mixq.quant.cost import COSTS, CostModel
from mixq.quant.model import QuantModel

PARETO_DEFAULTS = EvoQConfig(population=32, iterations=2000)  # a front needs a wider population than one budget
#: the sweep's defaults: EvoQ's population, 1,500 children over all budgets together (about 1.5x one search)
SWEEP_DEFAULTS = EvoQConfig(population=16, iterations=1500)
METHODS = ("sweep", "nsga2")


def _archive_front(cache: dict[Genome, float], genome_cost) -> list[tuple[Genome, float, float]]:
    """The non-dominated ``(genome, fitness, cost)`` of every finite evaluated genome, cheapest first."""
    archive = [(g, f) for g, f in cache.items() if np.isfinite(f)]
    points = np.array([[f, genome_cost(g)] for g, f in archive])
    return [(archive[i][0], float(points[i, 0]), float(points[i, 1])) for i in pareto_indices(points[:, ::-1])]


class ParetoEvolution(TournamentEvolution):
    """NSGA-II selection over genomes with a cached fitness and a cost (both minimised).

    Args:
        config: population, iterations, seed and children per generation (``sample`` is not used: parents
            come from binary tournaments).
        evaluate: genome -> fitness.
        cost: genome -> cost.
        mutate: (genome, rng) -> child.
        initial: rng -> initial genomes (padded by mutation up to the population size).
        state: a saved state to resume from.
        evaluate_many: batch evaluator (see :class:`~mixq.evoq.evolution.TournamentEvolution`).
    """

    def __init__(self, config: EvolutionConfig, evaluate, cost, mutate, initial, state: EvolutionState | None = None,
                 evaluate_many=None) -> None:
        self._cost = cost
        super().__init__(config, evaluate, mutate, initial, state=state, evaluate_many=evaluate_many)

    def _objectives(self, members: list[tuple[Genome, float]]) -> np.ndarray:
        return np.array([[f, self._cost(g)] for g, f in members], dtype=np.float64)

    def _ranking(self, members: list[tuple[Genome, float]]) -> tuple[np.ndarray, np.ndarray]:
        """Each member's non-domination rank and its crowding distance within its rank."""
        f = self._objectives(members)
        ranks = nondominated_ranks(f)
        crowd = np.zeros(len(members))
        for r in np.unique(ranks):
            idx = np.flatnonzero(ranks == r)
            crowd[idx] = crowding_distance(f[idx])
        return ranks, crowd

    def _select(self, members: list[tuple[Genome, float]], size: int) -> list[tuple[Genome, float]]:
        """NSGA-II's environmental selection of ``size`` members (duplicates of a genome last)."""
        unique, repeats, seen = [], [], set()
        for m in members:
            (repeats if m[0] in seen else unique).append(m)
            seen.add(m[0])
        ranks, crowd = self._ranking(unique)
        order = sorted(range(len(unique)), key=lambda i: (ranks[i], -crowd[i], i))
        chosen = [unique[i] for i in order[:size]]
        return chosen + repeats[: size - len(chosen)]

    def step(self) -> None:
        """One generation: ``K`` binary tournaments and mutations, one batch evaluation, one selection."""
        pop = self.state.population
        k = max(1, min(self.config.offspring, self.config.iterations - self.state.iteration))
        ranks, crowd = self._ranking(pop)
        children = []
        for _ in range(k):
            i, j = (int(v) for v in self.rng.choice(len(pop), size=2, replace=False))
            winner = i if (ranks[i], -crowd[i]) <= (ranks[j], -crowd[j]) else j
            children.append(self._mutate(pop[winner][0], self.rng))
        fits = self.fitness_many(children)
        self.state.population = self._select(pop + list(zip(children, fits)), len(pop))
        for _ in range(k):
            self.state.iteration += 1
            self._record()


@dataclass
class ParetoResult:
    """Outcome of :func:`pareto_search`.

    Attributes:
        cost: the cost axis (``"bits"``, ``"mb"`` or ``"bitops"``).
        front: non-dominated ``(genome, fitness, cost)`` of every evaluated configuration, cheapest first.
        layers: layer names (genome order: weight bits, then input bits when activations were searched).
        evaluations: fitness evaluations.
        iterations: children produced.
        seconds: search wall time (resumed runs add up).
        best_history: lowest fitness after each iteration.
        settings: the EvoQConfig as a dict.
        layer_passes: prefix cache counts (see :class:`~mixq.evoq.bitsearch.EvoQResult`).
    """

    cost: str
    front: list[tuple[Genome, float, float]]
    layers: list[str]
    evaluations: int
    iterations: int
    seconds: float
    best_history: list[float] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    layer_passes: dict = field(default_factory=dict)

    def config(self, genome: Genome) -> BitConfig:
        """The :class:`BitConfig` of a genome (with input bits when it has activation genes)."""
        n = len(self.layers)
        return BitConfig(dict(zip(self.layers, genome[:n])), dict(zip(self.layers, genome[n:])))

    def at(self, limit: float) -> tuple[Genome, float, float] | None:
        """The front point of lowest fitness whose cost is within ``limit`` (None when none is).

        Args:
            limit: a budget on the front's cost axis.

        Returns:
            ``(genome, fitness, cost)`` or None.
        """
        within = [p for p in self.front if p[2] <= limit * (1 + 1e-12)]
        return min(within, key=lambda p: (p[1], p[2])) if within else None


def pareto_search(
    qm: QuantModel,
    x: torch.Tensor,
    reference: torch.Tensor,
    cost_model: CostModel,
    cost: str = "bitops",
    config: EvoQConfig = PARETO_DEFAULTS,
    sensitivity: SensitivityTable | None = None,
    act_sensitivity: SensitivityTable | None = None,
    cap: Budget | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    progress: bool = True,
    signature: dict | None = None,
    executor: Executor | None = None,
    prefix_mb: float = 2048.0,
) -> ParetoResult:
    """Search the front of (output MSE, cost) in one run (module docstring).

    Args:
        qm: quantized model (left at the cheapest front point's bits).
        x: calibration inputs.
        reference: float logits on ``x``.
        cost_model: the model's :class:`CostModel`.
        cost: the cost axis: ``"bits"`` (average weight bits), ``"mb"`` or ``"bitops"``.
        config: search settings (``population``, ``iterations``, ``mutation``, ``act_choices``, ``seed``,
            ``offspring``; ``sample`` is unused).
        sensitivity: weight table (guided mutation).
        act_sensitivity: activation table (guided mutation of activation genes).
        cap: an optional budget no configuration may exceed (default: none).
        checkpoint: JSON file the search state is saved to every generation and resumed from.
        checkpoint_every: generations between checkpoints.
        progress: progress bar.
        signature: further settings a checkpoint must match.
        executor: where each generation's children are evaluated (default here).
        prefix_mb: prefix cache memory (MiB) when the fitness runs here.

    Returns:
        The :class:`ParetoResult`.
    """
    if cost not in COSTS:
        raise MixqError(f"Pareto cost must be one of {list(COSTS)}, got {cost!r}")
    n = len(qm.layer_names)
    if config.init != "uniform":
        raise MixqError(f"the NSGA-II front search starts from the uniform points; init={config.init!r} is for "
                        "single-budget and sweep searches")
    budget = cap or Budget(avg_bits=config.max_bits)  # no cap: every configuration of the bit range fits
    space = BitSpace(qm.layer_params, budget, config, sensitivity, macs=list(cost_model.macs),
                     act_sensitivity=act_sensitivity, act_bits=qm.act_bits)

    def genome_cost(g: Genome) -> float:
        return cost_model.cost_of(cost, g[:n], g[n:] if len(g) > n else None)

    def initial(rng: np.random.Generator) -> list[Genome]:
        acts = space.acts or (None,)
        uniform = [tuple([w] * n) + (tuple([a] * n) if a is not None else ())
                   for w in range(space.lo, space.hi + 1) for a in acts]
        feasible = [g for g in uniform if space.feasible(g)]
        return (feasible or [space.repair(uniform[0], rng)])[: config.population]

    local = executor is None or isinstance(executor, SerialExecutor)
    evaluate = FitnessEvaluator(qm, x, reference, prefix_mb=prefix_mb if local else 0.0)
    sig = search_signature(qm.layer_names, space.limit, config, {**(signature or {}), "pareto_cost": cost},
                           space.ops_limit)
    ckpt = _SearchCheckpoint(checkpoint, sig, config.iterations)
    state, elapsed = ckpt.load()
    search, seconds = _evolve(
        lambda evaluate_many: ParetoEvolution(config.evolution(), evaluate, genome_cost, space.mutate, initial,
                                              state=state, evaluate_many=evaluate_many),
        evaluate, (qm, x, reference), executor, ckpt, elapsed, config.iterations, checkpoint_every, progress,
        "evoq pareto")
    front = _archive_front(search.state.cache, genome_cost)
    qm.set_bits_tuple(front[0][0])
    return ParetoResult(cost=cost, front=front, layers=list(qm.layer_names), evaluations=search.state.evaluations,
                        iterations=search.state.iteration, seconds=seconds,
                        best_history=list(search.state.best_history), settings=asdict(config),
                        layer_passes={"computed": evaluate.cache.computed, "replayed": evaluate.cache.replayed})


def budget_on(cost: str, limit: float) -> Budget:
    """The :class:`Budget` that bounds one cost axis at ``limit``.

    Args:
        cost: ``"bits"``, ``"mb"`` or ``"bitops"``.
        limit: the bound.

    Returns:
        The budget.
    """
    if cost not in COSTS:
        raise MixqError(f"Pareto cost must be one of {list(COSTS)}, got {cost!r}")
    if cost == "bits":
        return Budget(avg_bits=limit)
    return Budget(size_mb=limit) if cost == "mb" else Budget(bitops=limit)


def _tightest(a: Budget, b: Budget | None) -> Budget:
    """Every limit of ``a`` and ``b``, the smaller where both set one."""
    if b is None:
        return a

    def least(u: float | None, v: float | None) -> float | None:
        return v if u is None else u if v is None else min(u, v)

    return Budget(avg_bits=least(a.avg_bits, b.avg_bits), size_mb=least(a.size_mb, b.size_mb),
                  bitops=least(a.bitops, b.bitops))


def sweep_search(
    qm: QuantModel,
    x: torch.Tensor,
    reference: torch.Tensor,
    cost_model: CostModel,
    cost: str,
    budgets: list[float],
    config: EvoQConfig = PARETO_DEFAULTS,
    sensitivity: SensitivityTable | None = None,
    act_sensitivity: SensitivityTable | None = None,
    cap: Budget | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    signature: dict | None = None,
    executor: Executor | None = None,
    prefix_mb: float = 2048.0,
) -> ParetoResult:
    """Every budget in one run by a warm-started sweep: EvoQ at each budget, loosest first, sharing one cache.

    The search at budget ``k`` starts from the final population of budget ``k - 1`` repaired into the
    tighter budget (the first from EvoQ's usual uniform start) and runs ``config.iterations / len(budgets)``
    children; one fitness cache, one prefix cache and the sensitivity tables serve every stage, so a genome
    seen at one budget is never evaluated again at another. The front is the non-dominated set of every
    configuration evaluated; :meth:`ParetoResult.at` gives the best point within each budget.

    Args:
        qm: quantized model (left at the cheapest front point's bits).
        x: calibration inputs.
        reference: float logits on ``x``.
        cost_model: the model's cost model.
        cost: the budgets' axis (``"bits"``, ``"mb"``, ``"bitops"``).
        budgets: the budgets (any order; searched loosest first).
        config: search settings; ``iterations`` is the total over all budgets.
        sensitivity: weight table (guided mutation and repair).
        act_sensitivity: activation table (with ``config.act_choices``).
        cap: a budget every stage must also respect (its limits are added to each stage's).
        checkpoint_dir: folder for one resumable checkpoint per budget (``sweep_state_K.json``).
        progress: progress bars.
        signature: further settings the checkpoints must match.
        executor: where each generation's children are evaluated.
        prefix_mb: prefix cache memory (MiB) when the fitness runs here.

    Returns:
        The :class:`ParetoResult` (``settings["budgets"]`` lists the budgets, loosest first).
    """
    if not budgets:
        raise MixqError("a budget sweep needs at least one budget")
    order = sorted({float(b) for b in budgets}, reverse=True)
    n = len(qm.layer_names)
    per_stage = max(1, config.iterations // len(order))
    local = executor is None or isinstance(executor, SerialExecutor)
    evaluate = FitnessEvaluator(qm, x, reference, prefix_mb=prefix_mb if local else 0.0)
    shared: dict[Genome, float] = {}
    population: list[Genome] | None = None
    seconds = 0.0
    evaluations = iterations = 0
    history: list[float] = []
    for k, limit in enumerate(order):
        budget = _tightest(budget_on(cost, limit), cap)
        cost_model.check_budget(budget, config.min_bits, config.act_choices)
        space = BitSpace(qm.layer_params, budget, config, sensitivity, macs=list(cost_model.macs),
                         act_sensitivity=act_sensitivity, act_bits=qm.act_bits)
        stage = EvoQConfig(**{**asdict(config), "iterations": per_stage, "seed": config.seed + k})

        def initial(rng: np.random.Generator, space=space, population=population) -> list[Genome]:
            if population is None:
                return space.initial(space.uniform_bits(), rng, config.population,
                                     space.ilp_start() if config.init == "ilp" else None)
            return list(dict.fromkeys(space.repair(g, rng) for g in population))

        path = None if checkpoint_dir is None else os.path.join(checkpoint_dir, f"sweep_state_{k}.json")
        sig = search_signature(qm.layer_names, space.limit, stage,
                               {**(signature or {}), "sweep": {"cost": cost, "budgets": order, "stage": k,
                                                               "cap": None if cap is None else cap.to_dict()}},
                               space.ops_limit)
        ckpt = _SearchCheckpoint(path, sig, per_stage)
        state, elapsed = ckpt.load()
        if state is not None:
            shared.update(state.cache)
            state.cache = shared
        search, took = _evolve(
            lambda evaluate_many, space=space, stage=stage, initial=initial, state=state: TournamentEvolution(
                stage.evolution(), evaluate, space.mutate, initial, state=state, evaluate_many=evaluate_many,
                cache=shared),
            evaluate, (qm, x, reference), executor, ckpt, elapsed, per_stage, 1, progress,
            f"evoq sweep {k + 1}/{len(order)}")
        population = [g for g, _ in search.state.population]
        seconds += took
        evaluations += search.state.evaluations
        iterations += search.state.iteration
        history.extend(search.state.best_history)

    def genome_cost(g: Genome) -> float:
        return cost_model.cost_of(cost, g[:n], g[n:] if len(g) > n else None)

    front = _archive_front(shared, genome_cost)
    qm.set_bits_tuple(front[0][0])
    return ParetoResult(cost=cost, front=front, layers=list(qm.layer_names), evaluations=evaluations,
                        iterations=iterations, seconds=seconds, best_history=history,
                        settings={**asdict(config), "budgets": order, "method": "sweep"},
                        layer_passes={"computed": evaluate.cache.computed, "replayed": evaluate.cache.replayed})
