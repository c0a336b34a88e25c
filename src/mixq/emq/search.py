"""EMQ's evolutionary search of proxy formulas, with diversity-prompting selection and compatibility screening.

Fitness of a formula = rank correlation (Kendall tau by default, or Spearman) between its scores and the
measured top-1 of the *training* part of a seeded split of an MQ benchmark. Every reported number is on
the *held-out* part. The per-layer sources (:mod:`mixq.emq.inputs`) are computed once per model.

One iteration:

1. two parents drawn uniformly from the better half of the population;
2. uniform crossover (each gene from either parent), then, with probability ``mutation_prob``, one gene
   mutated;
3. **diversity-prompting selection**: a freshly sampled random formula competes with the offspring;
   the better of the two replaces the population's worst member if it beats it.

**Compatibility screening** happens before each costly step, cheapest first, and every rejection is
counted by reason:

* ``duplicate``: the canonical form (identities dropped, commutative operands sorted, ...) was seen
  before: its cached fitness is reused, nothing is computed;
* ``bit-blind``: no bit-dependent part at all (``direct`` aggregation of a bit-independent value);
* ``shape``: operand shapes that an operation cannot combine, found from shapes alone;
* ``probe``: NaN / inf on a probe layer (the smallest), before the other layers are computed;
* ``nonfinite``: NaN / inf on any other layer;
* ``degenerate``: scores that cannot rank (fewer than 3 distinct values over the training configurations);
* ``unstable``: a fitness that moves by more than ``stability`` when every source is perturbed by a
  relative 1e-5 (:class:`~mixq.emq.inputs.PerturbedInputs`, about 100x float32 rounding): its ranking is
  rounding noise (e.g. ``mean(znorm(X))``, which is 0 up to rounding), would differ on another machine and
  would not hold on fresh configurations;
* ``equivalent``: the same gain table, up to a positive factor, as a formula already evaluated
  (its fitness is reused, no correlation is computed).

Screened formulas get fitness ``-inf`` (they never enter the population). The search checkpoints its
whole state (population, caches, counters, history, random generator) to ``search_state.json`` and
resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sstats

from mixq.emq.genotype import STRUCTURES, Genotype, crossover, mutate, random_genotype
from mixq.emq.inputs import SOURCES, FormulaInputs, PerturbedInputs
from mixq.emq.interpret import FormulaError, check_shapes, gain_table, layer_values
from mixq.errors import MixqError
from mixq.fileio import atomic_write_json, check_signature
from mixq.progress import progress_bar

METRICS = ("kendall", "spearman")
SCREEN_REASONS = ("duplicate", "bit-blind", "shape", "probe", "nonfinite", "degenerate", "unstable", "equivalent")

#: Default largest change of a formula's fitness under :class:`~mixq.emq.inputs.PerturbedInputs` (0 = no check).
STABILITY = 0.005


@dataclass(frozen=True)
class EMQConfig:
    """Settings of a formula search.

    Attributes:
        candidates: total formulas drawn (initial population, offspring and random competitors, screened
            ones included).
        population: population size.
        structures: genotype structures to draw from (``"tree"``, ``"linear"``).
        metric: fitness correlation, ``"kendall"`` or ``"spearman"``.
        train_fraction: share of the benchmark used for fitness; the rest is held out.
        crossover_prob: per-gene probability of taking the second parent's gene.
        mutation_prob: probability of mutating one gene of an offspring.
        sources: allowed input sources.
        seed: seed of the split, the search and the Hessian vectors.
        proxy_batch: labelled calibration images for the sources.
        hessian_samples: Rademacher vectors of the Hessian-diagonal source.
        checkpoint_every: iterations between checkpoints.
        stability: largest change of a formula's fitness when its sources are perturbed by a relative 1e-5;
            a formula that moves more is screened as ``unstable`` (0 turns the check off).
    """

    candidates: int = 1000
    population: int = 50
    structures: tuple[str, ...] = ("tree",)
    metric: str = "kendall"
    train_fraction: float = 0.5
    crossover_prob: float = 0.5
    mutation_prob: float = 0.5
    sources: tuple[str, ...] = tuple(SOURCES)
    seed: int = 0
    proxy_batch: int = 64
    hessian_samples: int = 16
    checkpoint_every: int = 25
    stability: float = STABILITY

    def __post_init__(self) -> None:
        if self.population < 2:
            raise MixqError(f"population must be >= 2, got {self.population}")
        if self.candidates < self.population:
            raise MixqError(f"candidates ({self.candidates}) must be at least the population ({self.population})")
        if not self.structures or any(s not in STRUCTURES for s in self.structures):
            raise MixqError(f"structures must be some of {sorted(STRUCTURES)}, got {list(self.structures)}")
        if self.metric not in METRICS:
            raise MixqError(f"metric must be one of {list(METRICS)}, got {self.metric!r}")
        if not 0 < self.train_fraction < 1:
            raise MixqError(f"train fraction must be strictly between 0 and 1, got {self.train_fraction}")
        for name in ("crossover_prob", "mutation_prob"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise MixqError(f"{name} must be in [0, 1], got {v}")
        if not self.stability >= 0:
            raise MixqError(f"stability must be >= 0 (0 = off), got {self.stability}")
        unknown = sorted(set(self.sources) - set(SOURCES))
        if unknown or not self.sources:
            raise MixqError(f"sources must be some of {list(SOURCES)}, got {list(self.sources)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        d = asdict(self)
        d["structures"] = list(self.structures)
        d["sources"] = list(self.sources)
        return d


def correlation(metric: str, scores: np.ndarray, accuracy: np.ndarray) -> float:
    """Kendall tau or Spearman rho (scipy.stats); NaN when undefined.

    Args:
        metric: ``"kendall"`` or ``"spearman"``.
        scores: proxy scores.
        accuracy: measured accuracies.

    Returns:
        The correlation.
    """
    fn = sstats.kendalltau if metric == "kendall" else sstats.spearmanr
    return float(fn(scores, accuracy)[0])


@dataclass
class Evaluated:
    """Outcome of one candidate: fitness (``-inf`` when screened) and the screening reason (or None)."""

    fitness: float
    reason: str | None


@dataclass
class SearchState:
    """Everything a resumed search needs (JSON round trip)."""

    population: list[tuple[Genotype, float]] = field(default_factory=list)
    cache: dict[str, Evaluated] = field(default_factory=dict)
    genotypes: dict[str, Genotype] = field(default_factory=dict)
    fingerprints: dict[str, float] = field(default_factory=dict)
    screened: Counter = field(default_factory=Counter)
    candidates: int = 0
    iteration: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    rng_state: dict | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "population": [[g.to_dict(), f] for g, f in self.population],
            "cache": {k: [_num(e.fitness), e.reason] for k, e in self.cache.items()},
            "fingerprints": self.fingerprints,
            "screened": dict(self.screened),
            "candidates": self.candidates,
            "iteration": self.iteration,
            "history": self.history,
            "rng_state": self.rng_state,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchState:
        """Parse :meth:`to_dict` output."""
        pop = [(Genotype.from_dict(g), float(f)) for g, f in d["population"]]
        cache = {k: Evaluated(float(f), r) for k, (f, r) in d["cache"].items()}
        genotypes = {k: Genotype.from_dict(json.loads(k)) for k in cache}
        return cls(pop, cache, genotypes, dict(d["fingerprints"]), Counter(d["screened"]), int(d["candidates"]),
                   int(d["iteration"]), list(d["history"]), d["rng_state"], float(d.get("seconds", 0.0)))

    def best(self) -> tuple[Genotype, float]:
        """Best evaluated formula (ties: first in the cache order)."""
        key = max(self.cache, key=lambda k: self.cache[k].fitness)
        return self.genotypes[key], self.cache[key].fitness


def _num(f: float) -> float | str:
    return f if np.isfinite(f) else "-inf"


class ScreenedFitness:
    """The search's view of a fitness: duplicate and equivalence screening around a subclass's :meth:`assess`."""

    def assess(self, g: Genotype) -> tuple[float, str | None, np.ndarray | None]:
        """``(fitness, screening reason or None, array to fingerprint for equivalence)`` of one formula."""
        raise NotImplementedError

    def evaluate(self, g: Genotype, state: SearchState) -> Evaluated:
        """Screen then score one formula, updating the caches and counters of ``state``.

        Args:
            g: the formula.
            state: search state (its caches are read and written).

        Returns:
            The outcome.
        """
        key = g.key()
        if key in state.cache:
            state.screened["duplicate"] += 1
            return state.cache[key]
        out = self._evaluate_new(g, state)
        if out.reason is not None and out.reason != "equivalent":
            state.screened[out.reason] += 1
        state.cache[key] = out
        state.genotypes[key] = g.canonical()
        return out

    def _evaluate_new(self, g: Genotype, state: SearchState) -> Evaluated:
        f, reason, gains = self.assess(g)
        if reason is not None:
            return Evaluated(f, reason)
        fp = _fingerprint(gains)
        if fp in state.fingerprints:
            state.screened["equivalent"] += 1
            return Evaluated(state.fingerprints[fp], "equivalent")
        state.fingerprints[fp] = f
        return Evaluated(f, None)


class FormulaFitness(ScreenedFitness):
    """Screens and scores formulas against the training configurations.

    Args:
        inputs: per-layer sources of the model.
        bits: ``(n, L)`` weight bits of the training configurations.
        accuracy: ``(n,)`` their top-1.
        metric: ``"kendall"`` or ``"spearman"``.
        stability: largest fitness change under :class:`~mixq.emq.inputs.PerturbedInputs` (0 = no check).
    """

    def __init__(self, inputs: FormulaInputs, bits: np.ndarray, accuracy: np.ndarray, metric: str,
                 stability: float = STABILITY) -> None:
        self.inputs = inputs
        self.stability = float(stability)
        self._perturbed: PerturbedInputs | None = None
        self.bit_values = sorted({int(b) for b in np.unique(bits)})
        col = {b: k for k, b in enumerate(self.bit_values)}
        self.cols = np.vectorize(col.__getitem__)(bits)  # (n, L)
        self.rows = np.arange(bits.shape[1])
        self.accuracy = np.asarray(accuracy, dtype=np.float64)
        self.metric = metric
        sizes = [int(np.prod(inputs.shape("qerror", i)))
                 for i in range(len(inputs.layer_names))]
        self.probe_layer = int(np.argmin(sizes))

    def scores(self, gains: np.ndarray) -> np.ndarray:
        """Scores of the training configurations from a gain table over :attr:`bit_values`."""
        return gains[self.rows, self.cols].sum(axis=1)

    def gains(self, g: Genotype, layers: Sequence[int] | None = None) -> np.ndarray:
        """Gain table of a formula over :attr:`bit_values`."""
        values = layer_values(g, self.inputs, self.bit_values, layers)
        return gain_table(g, values, self.bit_values)

    def assess(self, g: Genotype) -> tuple[float, str | None, np.ndarray | None]:
        """Screen and score one formula without a search state (no duplicate or equivalence check).

        Args:
            g: the formula.

        Returns:
            ``(fitness, reason, gains)``: ``(-inf, reason, None)`` when screened, else the correlation, None
            and the gain table (what the equivalence check fingerprints).
        """
        fail = float("-inf")
        if g.aggregate == "direct" and not g.bit_dependent:
            return fail, "bit-blind", None
        try:
            check_shapes(g, self.inputs)
        except FormulaError as exc:
            return fail, exc.reason if exc.reason == "shape" else "shape", None
        with np.errstate(all="ignore"):
            probe = self.gains(g, [self.probe_layer])
            if not np.all(np.isfinite(probe)):
                return fail, "probe", None
            gains = self.gains(g)
            if not np.all(np.isfinite(gains)):
                return fail, "nonfinite", None
            scores = self.scores(gains)
        if not np.all(np.isfinite(scores)) or np.unique(scores).size < 3:
            return fail, "degenerate", None
        f = correlation(self.metric, scores, self.accuracy)
        if not np.isfinite(f):
            return fail, "degenerate", None
        if self.stability > 0 and not self._stable(g, f):
            return fail, "unstable", None
        return f, None, gains

    def _stable(self, g: Genotype, f: float) -> bool:
        """Whether the fitness stays within ``stability`` of ``f`` on perturbed sources."""
        if self._perturbed is None:
            self._perturbed = PerturbedInputs(self.inputs)
        with np.errstate(all="ignore"):
            gains = gain_table(g, layer_values(g, self._perturbed, self.bit_values), self.bit_values)
            scores = self.scores(gains)
        if not np.all(np.isfinite(scores)) or np.ptp(scores) == 0:
            return False
        return abs(correlation(self.metric, scores, self.accuracy) - f) <= self.stability

def _fingerprint(gains: np.ndarray) -> str:
    scale = float(np.max(np.abs(gains)))
    norm = gains / scale if scale > 0 else gains
    text = np.array2string(norm, precision=7, floatmode="maxprec", threshold=10**9)
    return hashlib.sha1(text.encode()).hexdigest()


class FormulaSearch:
    """The evolution loop (see the module docstring).

    Args:
        config: settings.
        fitness: the screening and scoring object.
        state: a saved state to resume from.
    """

    def __init__(self, config: EMQConfig, fitness: ScreenedFitness, state: SearchState | None = None) -> None:
        self.config = config
        self.fitness = fitness
        self.rng = np.random.default_rng(config.seed)
        self.state = state or SearchState()
        if self.state.rng_state is not None:
            self.rng.bit_generator.state = self.state.rng_state

    def _random(self) -> Genotype:
        structure = self.config.structures[int(self.rng.integers(len(self.config.structures)))]
        return random_genotype(self.rng, structure, self.config.sources)

    def _candidate(self, g: Genotype) -> float:
        self.state.candidates += 1
        return self.fitness.evaluate(g, self.state).fitness

    @property
    def done(self) -> bool:
        """Whether the candidate budget is spent."""
        return self.state.candidates >= self.config.candidates

    def initialise(self) -> None:
        """Fill the population with valid random formulas (screened ones count as candidates)."""
        pop = self.state.population
        keys = {g.key() for g, _ in pop}
        while len(pop) < self.config.population and not self.done:
            g = self._random()
            f = self._candidate(g)
            if np.isfinite(f) and g.key() not in keys:
                pop.append((g, f))
                keys.add(g.key())
        if len(pop) < 2:
            raise MixqError(f"fewer than 2 valid formulas in {self.state.candidates} candidates; raise the budget")
        self._record()

    def step(self) -> None:
        """One iteration: parents, crossover, mutation, diversity-prompting selection."""
        pop = sorted(self.state.population, key=lambda gf: -gf[1])
        half = pop[: max(2, len(pop) // 2)]
        i, j = self.rng.choice(len(half), size=2, replace=False)
        child = crossover(half[i][0], half[j][0], self.rng, self.config.crossover_prob)
        if self.rng.random() < self.config.mutation_prob:
            child = mutate(child, self.rng, self.config.sources)
        contenders = [(child, self._candidate(child))]
        if not self.done:
            fresh = self._random()
            contenders.append((fresh, self._candidate(fresh)))
        winner = max(contenders, key=lambda gf: gf[1])
        keys = {g.key() for g, _ in pop}
        worst = len(pop) - 1
        if np.isfinite(winner[1]) and winner[1] > pop[worst][1] and winner[0].key() not in keys:
            pop[worst] = winner
        self.state.population = pop
        self.state.iteration += 1
        self._record()

    def _record(self) -> None:
        fits = [f for _, f in self.state.population]
        self.state.history.append({"iteration": self.state.iteration, "candidates": self.state.candidates,
                                   "best": float(max(fits)), "mean": float(np.mean(fits))})
        self.state.rng_state = self.rng.bit_generator.state


def run_search(
    config: EMQConfig,
    fitness: ScreenedFitness,
    state_path: str | os.PathLike | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[SearchState], None] | None = None,
    signature: dict[str, Any] | None = None,
) -> SearchState:
    """Run (or resume) a search until the candidate budget is spent.

    Args:
        config: settings.
        fitness: screening and scoring object.
        state_path: checkpoint file; resumed from when it exists and was written with the same settings.
        progress: show a progress bar.
        on_checkpoint: called after each checkpoint.
        signature: further settings the checkpoint must match (the benchmark and its content, the model).

    Returns:
        The final state.

    Raises:
        MixqError: a checkpoint written with other settings (each named), or a corrupt one.
    """
    state = load_state(state_path, config, signature)
    search = FormulaSearch(config, fitness, state)
    t0 = time.perf_counter() - search.state.seconds
    bar = progress_bar(total=config.candidates, initial=search.state.candidates, enabled=progress,
               desc="emq search", unit="formula")

    def save() -> None:
        search.state.seconds = time.perf_counter() - t0
        if state_path is not None:
            atomic_write_json(state_path, {"config": config.to_dict(), "signature": signature or {},
                                           "state": search.state.to_dict()}, indent=None)
        if on_checkpoint is not None:
            on_checkpoint(search.state)

    try:
        if not search.state.population:
            search.initialise()
            bar.update(search.state.candidates - bar.n)
            save()
        while not search.done:
            search.step()
            bar.update(search.state.candidates - bar.n)
            bar.set_postfix(best=f"{search.state.history[-1]['best']:.3f}")
            if search.state.iteration % config.checkpoint_every == 0:
                save()
        save()
    finally:
        bar.close()
    return search.state


RESUME_HINT = "rerun with --overwrite (overwrite=True) to discard it, or use another --out"


def _resumed_settings(config: dict[str, Any], signature: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must match: the settings but the checkpoint interval, and the caller's signature."""
    return {**signature, "config": {k: v for k, v in config.items() if k != "checkpoint_every"}}


def load_state(path: str | os.PathLike | None, config: EMQConfig, signature: dict[str, Any] | None = None
               ) -> SearchState | None:
    """The search state saved at ``path`` when it was written with the same settings.

    Args:
        path: checkpoint file (None or absent: nothing to resume).
        config: settings of this search.
        signature: further settings the checkpoint must match.

    Returns:
        The state, or None.

    Raises:
        MixqError: a corrupt checkpoint, or one written with other settings (naming each, old and new value).
    """
    if path is None or not Path(path).exists():
        return None
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        saved = _resumed_settings(data["config"], data.get("signature") or {})
        state = SearchState.from_dict(data["state"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MixqError(f"search checkpoint {str(path)!r} is corrupt ({exc!r}); delete it to start over") from None
    check_signature(saved, _resumed_settings(config.to_dict(), signature or {}), f"search checkpoint {str(path)!r}",
                    RESUME_HINT)
    return state
