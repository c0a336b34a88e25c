"""EvoQ: evolutionary search of per-layer weight bit-widths under a size budget.

Genome: one weight bit-width per quantized layer, in ``QuantModel.layer_names`` order. Fitness (eq. 3):
MSE between the quantized model's and the float model's logits on the N calibration samples. Every
individual satisfies the budget (eq. 1, or a size in MB): mutation is followed by a repair that lowers
bits until the configuration fits.

Sensitivity-guided mutation (``mutation="guided"``): each layer mutates with probability ``p``; its
direction comes from the sensitivity table ``S[j, b]`` (:mod:`mixq.evoq.sensitivity`). The layer's marginal
sensitivity density at its current bit-width, ``(S[j, b-1] - S[j, b+1]) / (2 params_j)`` (one-sided at
the ends), is ranked against the other layers' (percentile ``q_j``): the layer moves up one bit with
probability ``0.1 + 0.8 q_j`` and down otherwise, so layers that are sensitive at their current width
tend to gain bits and insensitive ones to give them up (the paper's rule, made concrete). The repair
also uses the table: it lowers the layer whose next bit down costs the least MSE per saved bit-param.
``mutation="random"`` (the ablation) moves each mutated layer up or down with equal probability and
repairs by lowering randomly chosen layers (chosen with probability proportional to their size).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mixq.bits import BitConfig, Budget
from mixq.errors import MixqError
from mixq.evaluation.metrics import output_mse
from mixq.evoq.evolution import EvolutionConfig, EvolutionState, Genome, TournamentEvolution
from mixq.evoq.sensitivity import SensitivityTable
from mixq.executor import Executor, SerialExecutor
from mixq.fileio import atomic_write_text, check_signature
from mixq.progress import progress_bar
from mixq.quant.model import QuantModel
from mixq.quant.replay import PrefixCache

MUTATIONS = ("guided", "random")


@dataclass(frozen=True)
class EvoQConfig:
    """EvoQ search settings (defaults from the paper).

    Attributes:
        population: population size P.
        sample: tournament sample size S.
        iterations: children T.
        mutation_prob: per-layer mutation probability p.
        min_bits: lowest weight bit-width.
        max_bits: highest weight bit-width.
        mutation: ``"guided"`` (sensitivity) or ``"random"``.
        seed: random seed.
        offspring: children per generation, evaluated as one batch (1 = the paper's steady state; more lets
            an executor spread a generation's fitness evaluations over its workers).
    """

    population: int = 16
    sample: int = 8
    iterations: int = 1000
    mutation_prob: float = 0.1
    min_bits: int = 2
    max_bits: int = 8
    mutation: str = "guided"
    seed: int = 0
    offspring: int = 1

    def __post_init__(self) -> None:
        self.evolution()  # validates population, sample, iterations and offspring
        if not 0 < self.mutation_prob <= 1:
            raise MixqError(f"mutation probability must be in (0, 1], got {self.mutation_prob}")
        if not 2 <= self.min_bits <= self.max_bits <= 8:
            raise MixqError(f"bit range must satisfy 2 <= min <= max <= 8, got {self.min_bits}..{self.max_bits}")
        if self.mutation not in MUTATIONS:
            raise MixqError(f"mutation must be one of {MUTATIONS}, got {self.mutation!r}")

    def evolution(self) -> EvolutionConfig:
        """The generic tournament settings."""
        return EvolutionConfig(self.population, self.sample, self.iterations, self.seed, self.offspring)


class BitSpace:
    """Budget-feasible bit genomes: mutation and repair.

    Args:
        params: weight parameters per layer.
        budget: the size budget.
        config: search settings.
        sensitivity: table for guided mutation and repair (required for ``"guided"``).
    """

    def __init__(
        self,
        params: list[int],
        budget: Budget,
        config: EvoQConfig,
        sensitivity: SensitivityTable | None = None,
    ) -> None:
        self.params = np.asarray(params, dtype=np.float64)
        self.config = config
        self.limit = budget.max_bit_params(int(self.params.sum()))
        self.lo, self.hi = config.min_bits, config.max_bits
        floor = float(self.params.sum() * self.lo)
        if floor > self.limit * (1 + 1e-12):
            raise MixqError(
                f"budget is infeasible: even {self.lo} bits everywhere needs "
                f"{floor / self.params.sum():.3f} average bits ({floor / 8 / 2**20:.4f} MB), above the budget "
                f"of {self.limit / self.params.sum():.3f} average bits ({self.limit / 8 / 2**20:.4f} MB)"
            )
        if config.mutation == "guided":
            if sensitivity is None:
                raise MixqError("guided mutation needs a sensitivity table")
            if len(sensitivity.layers) != len(params):
                raise MixqError("sensitivity table does not match the model's layers")
        self.table = sensitivity
        if sensitivity is not None:
            # S[j, b] for every b in lo..hi (log-interpolated if the table lacks a width)
            cols = np.arange(self.lo, self.hi + 1)
            known = np.array(sensitivity.bits, dtype=np.float64)
            logs = np.log(np.maximum(sensitivity.mse, 1e-30))
            self.S = np.exp(np.stack([np.interp(cols, known, row) for row in logs]))  # (L, hi-lo+1)

    # -- budget ------------------------------------------------------------------------------------
    def cost(self, genome: Genome) -> float:
        """Sum of params x bits."""
        return float(np.dot(self.params, genome))

    def feasible(self, genome: Genome) -> bool:
        """Whether the genome fits the budget and the bit range."""
        g = np.asarray(genome)
        return bool(g.min() >= self.lo and g.max() <= self.hi and self.cost(genome) <= self.limit * (1 + 1e-12))

    def _s(self, j: int, b: int) -> float:
        return float(self.S[j, b - self.lo])

    def repair(self, genome: Genome, rng: np.random.Generator) -> Genome:
        """Lower bits until the genome fits the budget (never leaves it over budget).

        Args:
            genome: a genome, possibly over budget.
            rng: random generator (random-mode repair).

        Returns:
            A feasible genome.
        """
        g = np.clip(np.asarray(genome, dtype=np.int64), self.lo, self.hi)
        cost = float(np.dot(self.params, g))
        while cost > self.limit * (1 + 1e-12):
            movable = np.flatnonzero(g > self.lo)
            if self.config.mutation == "guided":
                # MSE increase per saved bit-param when going one bit down
                price = np.array([(self._s(j, g[j] - 1) - self._s(j, g[j])) / self.params[j] for j in movable])
                j = movable[int(np.argmin(price))]
            else:
                w = self.params[movable]
                j = movable[int(rng.choice(len(movable), p=w / w.sum()))]
            g[j] -= 1
            cost -= self.params[j]
        return tuple(int(b) for b in g)

    # -- mutation ----------------------------------------------------------------------------------
    def up_probability(self, genome: Genome) -> np.ndarray:
        """Per-layer probability that a mutation moves the layer up (guided mode).

        Args:
            genome: current bits.

        Returns:
            Array of probabilities in [0, 1] (0 at max bits, 1 at min bits).
        """
        g = np.asarray(genome)
        n = len(g)
        if self.config.mutation == "random":
            p = np.full(n, 0.5)
        else:
            dens = np.empty(n)
            for j, b in enumerate(g):
                up, down = min(b + 1, self.hi), max(b - 1, self.lo)
                dens[j] = (self._s(j, down) - self._s(j, up)) / (max(up - down, 1) * self.params[j])
            order = np.argsort(np.argsort(np.log(np.maximum(dens, 1e-30)), kind="stable"), kind="stable")
            q = order / max(n - 1, 1)
            p = 0.1 + 0.8 * q
        p = np.where(g >= self.hi, 0.0, p)
        return np.where(g <= self.lo, 1.0, p)

    def mutate(self, genome: Genome, rng: np.random.Generator) -> Genome:
        """Mutate each layer with probability p (at least one layer), then repair.

        Args:
            genome: parent.
            rng: random generator.

        Returns:
            A feasible child.
        """
        g = np.asarray(genome, dtype=np.int64).copy()
        mask = rng.random(len(g)) < self.config.mutation_prob
        if not mask.any():
            mask[int(rng.integers(len(g)))] = True
        up = rng.random(len(g)) < self.up_probability(genome)
        g[mask] += np.where(up[mask], 1, -1)
        return self.repair(tuple(int(b) for b in g), rng)

    def initial(self, target_bits: int, rng: np.random.Generator, size: int) -> list[Genome]:
        """The uniform policy (repaired if needed) and random perturbations of it.

        Args:
            target_bits: the uniform bit-width to start from.
            rng: random generator.
            size: population size.

        Returns:
            ``size`` feasible genomes (the first is the uniform one).
        """
        base = self.repair(tuple([int(np.clip(target_bits, self.lo, self.hi))] * len(self.params)), rng)
        out = [base]
        while len(out) < size:
            g = np.asarray(base).copy()
            mask = rng.random(len(g)) < max(self.config.mutation_prob, 0.2)
            g[mask] += rng.choice([-1, 1], size=int(mask.sum()))
            out.append(self.repair(tuple(int(b) for b in np.clip(g, self.lo, self.hi)), rng))
        return out


@dataclass
class EvoQResult:
    """Outcome of a search.

    Attributes:
        config: best bit configuration.
        fitness: its output MSE on the calibration samples.
        avg_bits: its parameter-weighted average bits.
        size_mb: its weight size.
        best_history: best fitness after each iteration (index 0: initial population).
        mean_history: population mean fitness after each iteration.
        evaluations: fitness evaluations performed.
        iterations: children produced.
        seconds: search wall time (this process; resumed runs add up).
        settings: the EvoQConfig as a dict.
        sensitivity_seconds: wall time of the sensitivity table (set by :func:`mixq.evoq.bitsearch`; 0 when
            the table was given).
        layer_passes: ``{"computed", "replayed"}``: quantized-layer forwards of this process's fitness
            evaluations that were computed, and that the prefix cache answered (both 0 when a Ray executor ran them).
    """

    config: BitConfig
    fitness: float
    avg_bits: float
    size_mb: float
    best_history: list[float]
    mean_history: list[float]
    evaluations: int
    iterations: int
    seconds: float
    settings: dict = field(default_factory=dict)
    sensitivity_seconds: float = 0.0
    layer_passes: dict = field(default_factory=dict)

    @property
    def bits(self) -> BitConfig:
        """The best bit configuration (the same as :attr:`config`), ready for ``mixq.quantize``."""
        return self.config


class FitnessEvaluator:
    """EvoQ eq. 3: output MSE of a bit genome against the float model on fixed samples.

    Args:
        qm: quantized model.
        x: calibration inputs ``(N, C, H, W)``.
        reference: float model logits on ``x`` ``(N, K)``.
        prefix_mb: memory (MiB) for the layer outputs of recent genomes, so that a genome's evaluation
            replays the longest stored prefix of unchanged layers instead of recomputing it
            (:class:`~mixq.quant.replay.PrefixCache`; the same fitness bit for bit); 0 = every layer computed.

    Attributes:
        cache: the :class:`~mixq.quant.replay.PrefixCache` (its ``computed`` / ``replayed`` layer counts).
    """

    def __init__(self, qm: QuantModel, x: torch.Tensor, reference: torch.Tensor, prefix_mb: float = 0.0) -> None:
        self.qm, self.x, self.reference = qm, x, reference
        self.cache = PrefixCache(qm, x, max_mb=prefix_mb)

    @torch.no_grad()
    def __call__(self, genome: Genome) -> float:
        return output_mse(self.cache(genome), self.reference)


def _fitness_item(state: FitnessEvaluator | tuple[QuantModel, torch.Tensor, torch.Tensor], genome: Genome) -> float:
    """One fitness evaluation as an executor work item.

    ``state`` is this process's :class:`FitnessEvaluator` (serial executor: its prefix cache is kept across
    generations) or a worker's copy of ``(qm, x, reference)`` (Ray: evaluated without a prefix cache).
    """
    evaluate = state if isinstance(state, FitnessEvaluator) else FitnessEvaluator(*state)
    return evaluate(genome)


RESUME_HINT = "rerun with --overwrite (overwrite=True) to discard it, or use another output folder"


class _SearchCheckpoint:
    """The JSON file a search saves its state to and resumes from, tied to the search by a signature.

    Args:
        path: the file (None: no checkpoint).
        signature: every setting the search's result depends on, except the number of iterations.
        iterations: iterations asked for; a checkpoint may be extended, never cut short.
    """

    def __init__(self, path: str | os.PathLike | None, signature: dict, iterations: int) -> None:
        self.path = Path(path) if path is not None else None
        self.signature = json.loads(json.dumps(signature))
        self.iterations = iterations
        self._encoder: _StateEncoder | None = None

    def load(self) -> tuple[EvolutionState | None, float]:
        """The saved state and seconds already spent, or ``(None, 0.0)`` when there is no checkpoint.

        Raises:
            MixqError: an unreadable checkpoint, one made with other settings (naming each), one that
                already ran more iterations than asked for, or a malformed state.
        """
        if self.path is None or not self.path.exists():
            return None, 0.0
        name = str(self.path)
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MixqError(f"search checkpoint {name!r} is unreadable: {exc}; {RESUME_HINT}") from None
        signature = saved.get("signature") if isinstance(saved, dict) else None
        check_signature(signature if isinstance(signature, dict) else {}, self.signature,
                        f"search checkpoint {name!r}", RESUME_HINT)
        try:
            state, seconds = EvolutionState.from_dict(saved["state"]), float(saved.get("seconds", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise MixqError(f"search checkpoint {name!r} matches this search but its state is malformed "
                            f"({type(exc).__name__}: {exc}); remove it to start the search again") from None
        if state.iteration > self.iterations:
            raise MixqError(f"search checkpoint {name!r} was made with other settings (iterations: it has already "
                            f"run {state.iteration}, more than the {self.iterations} asked for; a shorter search "
                            f"ends elsewhere); {RESUME_HINT}")
        return state, seconds

    def save(self, search: TournamentEvolution, seconds: float) -> None:
        """Write the search state atomically (a unique temporary file, then a rename)."""
        if self.path is None:
            return
        if self._encoder is None:
            self._encoder = _StateEncoder()
        state = self._encoder.encode(search.state)
        atomic_write_text(self.path, f'{{"signature": {json.dumps(self.signature)}, "state": {state}, '
                                     f'"seconds": {json.dumps(seconds)}}}', durable=False)  # every generation


class _StateEncoder:
    """``json.dumps(state.to_dict())`` for a state whose cache and histories only grow, each entry encoded once.

    A search saves its state after every generation; encoding the whole cache each time would cost time
    growing with the search (3 ms per save after 1000 generations of ResNet-20), this costs the new entries.
    """

    GROWING = ("cache", "best_history", "mean_history")

    def __init__(self) -> None:
        self._parts: dict[str, list[str]] = {k: [] for k in self.GROWING}

    def encode(self, state: EvolutionState) -> str:
        """The state's JSON text (parsed, equal to ``state.to_dict()``)."""
        items = {"cache": state.cache.items(), "best_history": state.best_history, "mean_history": state.mean_history}
        for key, values in items.items():
            parts = self._parts[key]
            if len(values) < len(parts):  # another state: start again
                parts.clear()
            new = itertools.islice(values, len(parts), None)
            if key == "cache":
                parts.extend(json.dumps([list(g), f]) for g, f in new)
            else:
                parts.extend(json.dumps(v) for v in new)
        rest = {"population": [[list(g), f] for g, f in state.population], "iteration": state.iteration,
                "evaluations": state.evaluations, "rng_state": state.rng_state}  # the rest of to_dict()
        fixed = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in rest.items())
        growing = ", ".join(f'"{k}": [{", ".join(self._parts[k])}]' for k in self.GROWING)
        return f"{{{fixed}, {growing}}}"


def search_signature(layers: list[str], limit: float, config: EvoQConfig, extra: dict | None = None) -> dict:
    """What a search checkpoint must match to be resumed: layers, bit-param limit, settings but iterations.

    Args:
        layers: the quantized layers, in genome order.
        limit: the budget as a bound on sum(params x bits).
        config: search settings (``iterations`` is left out: a finished search may be extended).
        extra: further settings the caller's result depends on (e.g. the run's task and quantizer).

    Returns:
        The signature (JSON-serialisable).
    """
    settings = {k: v for k, v in asdict(config).items() if k != "iterations"}
    if settings["offspring"] == 1:
        del settings["offspring"]  # the steady state, as every checkpoint before the setting existed
    return {**(extra or {}), "layers": list(layers), "settings": settings, "limit": limit}


def evoq_search(
    qm: QuantModel,
    x: torch.Tensor,
    reference: torch.Tensor,
    budget: Budget,
    config: EvoQConfig = EvoQConfig(),
    sensitivity: SensitivityTable | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    progress: bool = True,
    signature: dict | None = None,
    executor: Executor | None = None,
    prefix_mb: float = 2048.0,
) -> EvoQResult:
    """Run EvoQ's tournament search (Alg. 1).

    Args:
        qm: quantized model (left set to the best configuration on return).
        x: calibration inputs ``(N, C, H, W)``.
        reference: float model logits on ``x``.
        budget: size budget.
        config: search settings.
        sensitivity: per-layer table (required for guided mutation).
        checkpoint: JSON file to save the search state to every ``checkpoint_every`` iterations; if it
            exists and matches this search, the search resumes from it (a checkpoint of fewer iterations
            is extended; one of other settings, or of more iterations, is refused naming the settings).
        checkpoint_every: generations (each ``config.offspring`` tournaments and children) between checkpoints.
        progress: show a progress bar with the best fitness.
        signature: further settings the checkpoint must match (the pipeline's task, quantizer and budget).
        executor: where each generation's new children are evaluated (default: here, on ``qm``). With
            ``config.offspring`` > 1 a Ray executor evaluates a generation's children in parallel; the search
            is the same as the serial one of the same seed and offspring.
        prefix_mb: memory (MiB) for recent genomes' layer outputs, so a child replays the unchanged prefix of
            layers instead of recomputing it (:class:`FitnessEvaluator`; the same search bit for bit); 0 = off.
            Used where the fitness runs in this process.

    Returns:
        The :class:`EvoQResult`.
    """
    space = BitSpace(qm.layer_params, budget, config, sensitivity)
    target = budget.max_bit_params(qm.total_params) / qm.total_params
    local = executor is None or isinstance(executor, SerialExecutor)  # fitness here: the prefix cache helps
    evaluate = FitnessEvaluator(qm, x, reference, prefix_mb=prefix_mb if local else 0.0)
    # a checkpoint resumes the same search; more iterations may be asked for (extends the run)
    ckpt = _SearchCheckpoint(checkpoint, search_signature(qm.layer_names, space.limit, config, signature),
                             config.iterations)
    state, elapsed = ckpt.load()
    save = ckpt.save

    t0 = time.perf_counter()
    # a serial executor maps over this process's evaluator (prefix cache and all); Ray over workers' copies
    pool = None if executor is None else executor.session(evaluate if local else (qm, x, reference))
    try:
        search = TournamentEvolution(
            config.evolution(),
            evaluate,
            space.mutate,
            lambda rng: space.initial(math.floor(target + 1e-9), rng, config.population),
            state=state,
            evaluate_many=None if pool is None else (lambda genomes: pool.map(_fitness_item, genomes)),
        )
        bar = progress_bar(total=config.iterations, initial=search.state.iteration, desc="evoq", enabled=progress)
        generation = 0
        while not search.done:
            before = search.state.iteration
            search.step()
            generation += 1
            bar.update(search.state.iteration - before)
            if search.state.iteration // 10 > before // 10:
                bar.set_postfix(best_mse=f"{search.state.best[1]:.5f}", evals=search.state.evaluations)
            if generation % checkpoint_every == 0:
                save(search, elapsed + time.perf_counter() - t0)
        bar.close()
    finally:
        if pool is not None:
            pool.close()
    seconds = elapsed + time.perf_counter() - t0
    save(search, seconds)
    best, fit = search.state.best
    assert space.feasible(best), "search produced an over-budget configuration"
    qm.set_bits_tuple(best)
    cfg = BitConfig(dict(zip(qm.layer_names, best)))
    return EvoQResult(
        config=cfg,
        fitness=fit,
        avg_bits=qm.avg_bits(cfg),
        size_mb=qm.size_mb(cfg),
        best_history=list(search.state.best_history),
        mean_history=list(search.state.mean_history),
        evaluations=search.state.evaluations,
        iterations=search.state.iteration,
        seconds=seconds,
        settings=asdict(config),
        layer_passes={"computed": evaluate.cache.computed, "replayed": evaluate.cache.replayed},
    )
