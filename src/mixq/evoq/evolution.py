"""Generic tournament-selection evolution (EvoQ Alg. 1), torch-free, seeded and resumable.

Each child comes from a tournament: ``S`` individuals sampled from a population of ``P``, the fittest of
the sample mutated into the child, which replaces the worst of the sample. Fitness is minimised. Genomes
are tuples; a child equal to an already evaluated genome reuses the cached fitness instead of a new
evaluation.

A generation makes ``K`` children (``offspring``, default 1 = the paper's steady state): ``K`` tournaments
on the population as it stands, then the ``K`` new genomes are evaluated together (one batch, which an
executor can spread over workers), then each child replaces the worst of its own sample in turn. The same
seed and ``K`` give the same search whatever evaluates the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mixq.errors import MixqError

Genome = tuple[int, ...]


@dataclass(frozen=True)
class EvolutionConfig:
    """Tournament selection settings.

    Attributes:
        population: population size P.
        sample: tournament sample size S (1 = random search, P = greedy).
        iterations: number of children T.
        seed: random seed.
        offspring: children per generation K, evaluated as one batch (1 = steady state).
    """

    population: int = 16
    sample: int = 8
    iterations: int = 1000
    seed: int = 0
    offspring: int = 1

    def __post_init__(self) -> None:
        if self.population < 2:
            raise MixqError(f"population must be >= 2, got {self.population}")
        if not 1 <= self.sample <= self.population:
            raise MixqError(f"sample size must be in 1..population ({self.population}), got {self.sample}")
        if self.iterations < 0:
            raise MixqError(f"iterations must be >= 0, got {self.iterations}")
        if not isinstance(self.offspring, int) or self.offspring < 1:
            raise MixqError(f"offspring (children per generation) must be an integer >= 1, got {self.offspring!r}")


@dataclass
class EvolutionState:
    """Everything needed to resume a search.

    Attributes:
        population: list of (genome, fitness).
        cache: genome -> fitness of every evaluated genome.
        best_history: best fitness seen after each iteration (index 0 = initial population).
        mean_history: population mean fitness after each iteration.
        iteration: children produced so far.
        evaluations: fitness evaluations performed (cache hits excluded).
        rng_state: numpy bit generator state.
    """

    population: list[tuple[Genome, float]] = field(default_factory=list)
    cache: dict[Genome, float] = field(default_factory=dict)
    best_history: list[float] = field(default_factory=list)
    mean_history: list[float] = field(default_factory=list)
    iteration: int = 0
    evaluations: int = 0
    rng_state: dict | None = None

    def to_dict(self) -> dict:
        """JSON form."""
        return {
            "population": [[list(g), f] for g, f in self.population],
            "cache": [[list(g), f] for g, f in self.cache.items()],
            "best_history": self.best_history,
            "mean_history": self.mean_history,
            "iteration": self.iteration,
            "evaluations": self.evaluations,
            "rng_state": self.rng_state,
        }

    @classmethod
    def from_dict(cls, data: dict) -> EvolutionState:
        """Parse :meth:`to_dict` output.

        Args:
            data: parsed JSON.

        Returns:
            The state.
        """
        return cls(
            population=[(tuple(g), float(f)) for g, f in data["population"]],
            cache={tuple(g): float(f) for g, f in data["cache"]},
            best_history=list(data["best_history"]),
            mean_history=list(data["mean_history"]),
            iteration=int(data["iteration"]),
            evaluations=int(data["evaluations"]),
            rng_state=data["rng_state"],
        )

    @property
    def best(self) -> tuple[Genome, float]:
        """Best (genome, fitness) ever evaluated (ties broken by first found)."""
        return min(self.cache.items(), key=lambda kv: kv[1])


class TournamentEvolution:
    """Tournament-selection evolution over tuple genomes (minimisation).

    Args:
        config: settings.
        evaluate: genome -> fitness (lower is better).
        mutate: (genome, rng) -> child genome.
        initial: rng -> list of initial genomes (at least one; padded by mutation up to P).
        state: a saved state to resume from.
        evaluate_many: list of genomes -> their fitnesses, in order (a batch; e.g. an executor's map).
            Default: ``evaluate`` on each genome in turn.
        cache: genome -> fitness already known (shared with other searches of the same fitness; a new
            state's cache is this dict itself). Ignored when ``state`` is given.
    """

    def __init__(
        self,
        config: EvolutionConfig,
        evaluate: Callable[[Genome], float],
        mutate: Callable[[Genome, np.random.Generator], Genome],
        initial: Callable[[np.random.Generator], list[Genome]],
        state: EvolutionState | None = None,
        evaluate_many: Callable[[list[Genome]], list[float]] | None = None,
        cache: dict[Genome, float] | None = None,
    ) -> None:
        self.config = config
        self._evaluate = evaluate
        self._evaluate_many = evaluate_many
        self._mutate = mutate
        self.rng = np.random.default_rng(config.seed)
        if state is None:
            self.state = EvolutionState(cache=cache if cache is not None else {})
            self._initialise(initial)
        else:
            self.state = state
            if state.rng_state is not None:
                self.rng.bit_generator.state = state.rng_state

    def fitness(self, genome: Genome) -> float:
        """Fitness of a genome, evaluated once and cached.

        Args:
            genome: the genome.

        Returns:
            Its fitness.
        """
        return self.fitness_many([genome])[0]

    def fitness_many(self, genomes: list[Genome]) -> list[float]:
        """Fitness of each genome; the ones not yet cached are evaluated once, together, as one batch.

        Args:
            genomes: the genomes (repeats allowed).

        Returns:
            Their fitnesses, in order (non-finite values become ``inf``).
        """
        cache = self.state.cache
        new = list(dict.fromkeys(g for g in genomes if g not in cache))
        if new:
            if self._evaluate_many is None:
                values = [self._evaluate(g) for g in new]
            else:
                values = list(self._evaluate_many(new))
                if len(values) != len(new):
                    raise AssertionError(f"evaluate_many returned {len(values)} fitnesses for {len(new)} genomes")
            for g, v in zip(new, values):
                v = float(v)
                cache[g] = v if np.isfinite(v) else float("inf")
            self.state.evaluations += len(new)
        return [cache[g] for g in genomes]

    def _record(self) -> None:
        fits = [f for _, f in self.state.population]
        self.state.best_history.append(self.state.best[1])
        self.state.mean_history.append(float(np.mean(fits)))
        self.state.rng_state = self.rng.bit_generator.state

    def _initialise(self, initial: Callable[[np.random.Generator], list[Genome]]) -> None:
        genomes = list(initial(self.rng))
        if not genomes:
            raise MixqError("the initial population is empty")
        tries = 0
        while len(genomes) < self.config.population and tries < 100 * self.config.population:
            genomes.append(self._mutate(genomes[int(self.rng.integers(len(genomes)))], self.rng))
            tries += 1
        genomes = genomes[: self.config.population]
        self.state.population = list(zip(genomes, self.fitness_many(genomes)))
        self._record()

    def step(self) -> None:
        """One generation: ``K`` tournaments and mutations, one batch evaluation, ``K`` replacements.

        The last generation makes only the children still missing from ``iterations`` (at least one).
        """
        pop = self.state.population
        k = max(1, min(self.config.offspring, self.config.iterations - self.state.iteration))
        samples, children = [], []
        for _ in range(k):
            idx = self.rng.choice(len(pop), size=self.config.sample, replace=False)
            parent = pop[min(idx, key=lambda i: pop[i][1])][0]  # first fittest of the sample
            samples.append(idx)
            children.append(self._mutate(parent, self.rng))
        for idx, child, f in zip(samples, children, self.fitness_many(children)):
            worst = sorted(idx, key=lambda i: pop[i][1])[-1]  # on the population as it now stands
            pop[worst] = (child, f)
            self.state.iteration += 1
            self._record()

    @property
    def done(self) -> bool:
        """Whether all iterations have run."""
        return self.state.iteration >= self.config.iterations
