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
from collections.abc import Callable
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
from mixq.knapsack import allocate_bits, allocate_pairs
from mixq.progress import progress_bar
from mixq.quant.cost import CostModel
from mixq.quant.model import QuantModel
from mixq.quant.replay import PrefixCache

MUTATIONS = ("guided", "random")
INITS = ("uniform", "ilp")


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
        act_choices: input (activation) bit-widths searched per layer beside the weight bits, e.g.
            ``(4, 6, 8)``; empty (default) = weight bits only, every input at the run's activation bits.
        init: what the first population is built around: ``"uniform"`` (the paper: the uniform policy at the
            budget) or ``"ilp"`` (the exact optimum, under the budget, of the sensitivity table's per-layer
            MSEs taken as additive; :mod:`mixq.knapsack`); the rest of the population is random
            perturbations of it, repaired into the budget.
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
    act_choices: tuple[int, ...] = ()
    init: str = "uniform"

    def __post_init__(self) -> None:
        self.evolution()  # validates population, sample, iterations and offspring
        choices = tuple(self.act_choices or ())
        if any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8 for b in choices) \
                or len(set(choices)) != len(choices) or len(choices) == 1:
            raise MixqError(f"activation bit choices must be two or more distinct integers in 2..8, got "
                            f"{list(choices)}")
        object.__setattr__(self, "act_choices", tuple(sorted(choices)))
        if not 0 < self.mutation_prob <= 1:
            raise MixqError(f"mutation probability must be in (0, 1], got {self.mutation_prob}")
        if not 2 <= self.min_bits <= self.max_bits <= 8:
            raise MixqError(f"bit range must satisfy 2 <= min <= max <= 8, got {self.min_bits}..{self.max_bits}")
        if self.mutation not in MUTATIONS:
            raise MixqError(f"mutation must be one of {MUTATIONS}, got {self.mutation!r}")
        if self.init not in INITS:
            raise MixqError(f"init must be one of {INITS}, got {self.init!r}")

    def evolution(self) -> EvolutionConfig:
        """The generic tournament settings."""
        return EvolutionConfig(self.population, self.sample, self.iterations, self.seed, self.offspring)


class BitSpace:
    """Budget-feasible bit genomes: mutation and repair.

    A genome is one weight bit-width per layer (``L`` genes), or with activation genes (``config.act_choices``)
    the weight bits followed by each layer's input bits (``2L`` genes, the inputs from ``act_choices``).

    Args:
        params: weight parameters per layer.
        budget: the budget (average bits, MB and/or BitOps).
        config: search settings.
        sensitivity: weight table for guided mutation and repair (required for ``"guided"``).
        macs: MACs per sample per layer (required for a BitOps budget or activation genes).
        act_sensitivity: activation table (:func:`~mixq.evoq.sensitivity.compute_act_sensitivity`; required
            for guided mutation with activation genes).
        act_bits: input bits of every layer when there are no activation genes (BitOps count).
    """

    def __init__(
        self,
        params: list[int],
        budget: Budget,
        config: EvoQConfig,
        sensitivity: SensitivityTable | None = None,
        macs: list[int] | None = None,
        act_sensitivity: SensitivityTable | None = None,
        act_bits: int = 8,
    ) -> None:
        self.params = np.asarray(params, dtype=np.float64)
        self.n = len(self.params)
        self.config = config
        self.limit = budget.max_bit_params(int(self.params.sum()))
        self.ops_limit = budget.max_bitops
        self.lo, self.hi = config.min_bits, config.max_bits
        self.acts = tuple(sorted(config.act_choices))  # () = weight genes only
        self.act_bits = act_bits
        if (math.isfinite(self.ops_limit) or self.acts) and macs is None:
            raise MixqError("a BitOps budget or activation genes need the per-layer MACs (macs=...)")
        self.macs = None if macs is None else np.asarray(macs, dtype=np.float64)
        floor = float(self.params.sum() * self.lo)
        if floor > self.limit * (1 + 1e-12):
            raise MixqError(
                f"budget is infeasible: even {self.lo} bits everywhere needs "
                f"{floor / self.params.sum():.3f} average bits ({floor / 8 / 2**20:.4f} MB), above the budget "
                f"of {self.limit / self.params.sum():.3f} average bits ({self.limit / 8 / 2**20:.4f} MB)"
            )
        if math.isfinite(self.ops_limit):
            least = self.ops(tuple([self.lo] * self.n) + tuple([self.acts[0]] * self.n if self.acts else ()))
            if least > self.ops_limit * (1 + 1e-12):
                a_min = self.acts[0] if self.acts else act_bits
                raise MixqError(f"budget is infeasible: even {self.lo}-bit weights and {a_min}-bit activations "
                                f"everywhere need {least:.6g} BitOps, above the budget of {self.ops_limit:.6g}")
        if config.mutation == "guided":
            if sensitivity is None:
                raise MixqError("guided mutation needs a sensitivity table")
            if len(sensitivity.layers) != len(params):
                raise MixqError("sensitivity table does not match the model's layers")
            if self.acts and (act_sensitivity is None or len(act_sensitivity.layers) != len(params)
                              or not set(self.acts) <= set(act_sensitivity.bits)):
                raise MixqError(f"guided mutation of activation bits needs an activation sensitivity table of the "
                                f"model's layers at {list(self.acts)} bits")
        self.table = sensitivity
        if sensitivity is not None:
            # S[j, b] for every b in lo..hi (log-interpolated if the table lacks a width)
            cols = np.arange(self.lo, self.hi + 1)
            known = np.array(sensitivity.bits, dtype=np.float64)
            logs = np.log(np.maximum(sensitivity.mse, 1e-30))
            self.S = np.exp(np.stack([np.interp(cols, known, row) for row in logs]))  # (L, hi-lo+1)
        self.A: np.ndarray | None = None  # A[j, i]: output MSE of layer j's input at acts[i] bits
        if self.acts and act_sensitivity is not None:
            self.A = act_sensitivity.mse[:, [act_sensitivity.bits.index(b) for b in self.acts]]

    # -- genome parts --------------------------------------------------------------------------------
    def weights(self, genome: Genome) -> np.ndarray:
        """The weight bits of a genome."""
        return np.asarray(genome[: self.n])

    def act_part(self, genome: Genome) -> np.ndarray:
        """The input bits of a genome (every layer at ``act_bits`` without activation genes)."""
        return np.asarray(genome[self.n:]) if self.acts else np.full(self.n, self.act_bits)

    # -- budget ------------------------------------------------------------------------------------
    def cost(self, genome: Genome) -> float:
        """Sum of params x weight bits."""
        return float(np.dot(self.params, genome[: self.n]))

    def ops(self, genome: Genome) -> float:
        """BitOps per sample: sum of MACs x weight bits x input bits (0 without MACs)."""
        if self.macs is None:
            return 0.0
        return float(np.dot(self.macs, self.weights(genome) * self.act_part(genome)))

    def feasible(self, genome: Genome) -> bool:
        """Whether the genome fits the budget, the bit range and the activation choices."""
        if len(genome) != self.n * (2 if self.acts else 1):
            return False
        g = self.weights(genome)
        if self.acts and not set(int(a) for a in genome[self.n:]) <= set(self.acts):
            return False
        return bool(g.min() >= self.lo and g.max() <= self.hi and self.cost(genome) <= self.limit * (1 + 1e-12)
                    and self.ops(genome) <= self.ops_limit * (1 + 1e-12))

    def _s(self, j: int, b: int) -> float:
        return float(self.S[j, b - self.lo])

    def repair(self, genome: Genome, rng: np.random.Generator) -> Genome:
        """Lower bits until the genome fits the budget (never leaves it over budget).

        With one limit exceeded, the gene lowered is the one with the least MSE increase per unit of that
        limit saved (guided), or one drawn with probability proportional to its saving (random); with two
        exceeded, each saving is first divided by its limit and the two added.

        Args:
            genome: a genome, possibly over budget.
            rng: random generator (random-mode repair).

        Returns:
            A feasible genome.
        """
        if not self.acts and not math.isfinite(self.ops_limit):
            return self._repair_size(genome, rng)
        n = self.n
        g = np.clip(np.asarray(genome[:n], dtype=np.int64), self.lo, self.hi)
        a = (np.asarray([min(self.acts, key=lambda c: (abs(c - v), c)) for v in genome[n:]], dtype=np.int64)
             if self.acts else np.full(n, self.act_bits, dtype=np.int64))
        tol = 1 + 1e-12
        while True:
            size, ops = float(np.dot(self.params, g)), float(np.dot(self.macs, g * a))
            over = [(size > self.limit * tol, self.limit), (ops > self.ops_limit * tol, self.ops_limit)]
            if not (over[0][0] or over[1][0]):
                break
            both = over[0][0] and over[1][0]
            moves: list[tuple[str, int, float, float]] = []  # (kind, layer, MSE increase, saving)
            for j in np.flatnonzero(g > self.lo):
                saves = (self.params[j], self.macs[j] * a[j])
                value = sum(s / (lim if both else 1.0) for s, (bad, lim) in zip(saves, over) if bad)
                if value > 0:
                    d = self._s(j, g[j] - 1) - self._s(j, g[j]) if self.config.mutation == "guided" else 0.0
                    moves.append(("w", int(j), d, value))
            if self.acts:
                for j in range(n):
                    i = self.acts.index(int(a[j]))
                    if i == 0 or not over[1][0]:
                        continue
                    saving = self.macs[j] * g[j] * (a[j] - self.acts[i - 1])
                    value = saving / (self.ops_limit if both else 1.0)
                    if value > 0:
                        d = float(self.A[j, i - 1] - self.A[j, i]) if self.A is not None else 0.0
                        moves.append(("a", j, d, value))
            if not moves:
                raise MixqError("cannot repair the genome into the budget (no gene left to lower)")
            if self.config.mutation == "guided":
                kind, j, _, _ = min(moves, key=lambda m: m[2] / m[3])
            else:
                values = np.array([m[3] for m in moves])
                kind, j, _, _ = moves[int(rng.choice(len(moves), p=values / values.sum()))]
            if kind == "w":
                g[j] -= 1
            else:
                a[j] = self.acts[self.acts.index(int(a[j])) - 1]
        out = tuple(int(b) for b in g)
        return out + tuple(int(b) for b in a) if self.acts else out

    def _repair_size(self, genome: Genome, rng: np.random.Generator) -> Genome:
        """:meth:`repair` with weight genes and a size limit only (the paper's case)."""
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
        """Per-layer probability that a mutation moves a weight gene up (guided mode).

        Args:
            genome: current bits.

        Returns:
            Array of probabilities in [0, 1] (0 at max bits, 1 at min bits).
        """
        g = np.asarray(genome[: self.n])
        n = len(g)
        if self.config.mutation == "random":
            p = np.full(n, 0.5)
        else:
            dens = np.empty(n)
            for j, b in enumerate(g):
                up, down = min(b + 1, self.hi), max(b - 1, self.lo)
                dens[j] = (self._s(j, down) - self._s(j, up)) / (max(up - down, 1) * self.params[j])
            p = _percentile_probability(dens)
        p = np.where(g >= self.hi, 0.0, p)
        return np.where(g <= self.lo, 1.0, p)

    def act_up_probability(self, genome: Genome) -> np.ndarray:
        """Per-layer probability that a mutation moves an activation gene to the next larger choice.

        Guided: the marginal activation sensitivity per BitOps of each layer's input at its current choice,
        ranked against the other layers' (the weight rule, with BitOps in place of bit-params).

        Args:
            genome: a genome with activation genes.

        Returns:
            Probabilities in [0, 1] (0 at the largest choice, 1 at the smallest).
        """
        w, a = self.weights(genome), self.act_part(genome)
        idx = np.array([self.acts.index(int(v)) for v in a])
        top = len(self.acts) - 1
        if self.config.mutation == "random" or self.A is None:
            p = np.full(self.n, 0.5)
        else:
            dens = np.empty(self.n)
            for j, i in enumerate(idx):
                up, down = min(i + 1, top), max(i - 1, 0)
                width = max(self.acts[up] - self.acts[down], 1)
                dens[j] = (self.A[j, down] - self.A[j, up]) / (width * max(self.macs[j] * w[j], 1.0))
            p = _percentile_probability(dens)
        p = np.where(idx >= top, 0.0, p)
        return np.where(idx <= 0, 1.0, p)

    def mutate(self, genome: Genome, rng: np.random.Generator) -> Genome:
        """Mutate each gene with probability p (at least one gene), then repair.

        Args:
            genome: parent.
            rng: random generator.

        Returns:
            A feasible child.
        """
        n = self.n
        g = np.asarray(genome[:n], dtype=np.int64).copy()
        mask = rng.random(n) < self.config.mutation_prob
        if not self.acts:
            if not mask.any():
                mask[int(rng.integers(n))] = True
            up = rng.random(n) < self.up_probability(genome)
            g[mask] += np.where(up[mask], 1, -1)
            return self.repair(tuple(int(b) for b in g), rng)
        amask = rng.random(n) < self.config.mutation_prob
        if not (mask.any() or amask.any()):
            k = int(rng.integers(2 * n))
            (mask if k < n else amask)[k % n] = True
        up = rng.random(n) < self.up_probability(genome)
        aup = rng.random(n) < self.act_up_probability(genome)
        g[mask] += np.where(up[mask], 1, -1)
        idx = np.array([self.acts.index(int(v)) for v in genome[n:]])
        idx[amask] += np.where(aup[amask], 1, -1)
        idx = np.clip(idx, 0, len(self.acts) - 1)
        return self.repair(tuple(int(b) for b in g) + tuple(self.acts[i] for i in idx), rng)

    def uniform_bits(self) -> int:
        """The largest uniform weight bit-width (inputs at their largest choice) that fits the budget, or
        the lowest bit-width when none does."""
        top_act = tuple([self.acts[-1]] * self.n) if self.acts else ()
        for b in range(self.hi, self.lo - 1, -1):
            if self.feasible(tuple([b] * self.n) + top_act):
                return b
        return self.lo

    def ilp_start(self) -> Genome:
        """The budget-feasible genome minimising the sum of the tables' single-layer MSEs (exact ILP).

        The weight table gives ``S[j, b]`` for every width of the search's range (log-interpolated where the
        table lacks one); with activation genes each layer's pair ``(w, a)`` costs ``S[j, w] + A[j, a]``.

        Returns:
            The genome (weight bits, then input bits with activation genes).

        Raises:
            MixqError: no sensitivity table (or no activation table with activation genes).
        """
        if self.table is None or (self.acts and self.A is None):
            need = "the sensitivity table" + (" and the activation table" if self.acts else "")
            raise MixqError(f"init='ilp' needs {need}")
        choices = list(range(self.lo, self.hi + 1))
        size = None if not math.isfinite(self.limit) else self.limit
        ops = None if not math.isfinite(self.ops_limit) else self.ops_limit
        macs = None if self.macs is None else [float(m) for m in self.macs]
        params = [int(p) for p in self.params]
        if self.acts:
            res = allocate_pairs(self.S, choices, self.A, self.acts, params, size, macs=macs, max_bitops=ops)
            return tuple(int(b) for b in res.bits) + tuple(int(a) for a in res.acts)
        res = allocate_bits(self.S, choices, params, size, macs=macs, max_bitops=ops, act_bits=self.act_bits)
        return tuple(int(b) for b in res.bits)

    def initial(self, target_bits: int, rng: np.random.Generator, size: int, start: Genome | None = None
                ) -> list[Genome]:
        """The uniform policy (repaired if needed), or ``start``, and random perturbations of it.

        Args:
            target_bits: the uniform bit-width to start from (inputs at their largest choice).
            rng: random generator.
            size: population size.
            start: a genome to start from instead of the uniform one (e.g. :meth:`ilp_start`).

        Returns:
            ``size`` feasible genomes (the first is the uniform one, or ``start`` repaired).
        """
        top_act = tuple([self.acts[-1]] * self.n) if self.acts else ()
        if start is None:
            start = tuple([int(np.clip(target_bits, self.lo, self.hi))] * self.n) + top_act
        base = self.repair(tuple(int(b) for b in start), rng)
        out = [base]
        while len(out) < size:
            g = np.asarray(base[: self.n]).copy()
            mask = rng.random(len(g)) < max(self.config.mutation_prob, 0.2)
            g[mask] += rng.choice([-1, 1], size=int(mask.sum()))
            child = tuple(int(b) for b in np.clip(g, self.lo, self.hi))
            if self.acts:
                idx = np.array([self.acts.index(int(v)) for v in base[self.n:]])
                amask = rng.random(self.n) < max(self.config.mutation_prob, 0.2)
                idx[amask] -= rng.integers(0, 2, size=int(amask.sum()))
                child += tuple(self.acts[i] for i in np.clip(idx, 0, len(self.acts) - 1))
            out.append(self.repair(child, rng))
        return out


def _percentile_probability(density: np.ndarray) -> np.ndarray:
    """``0.1 + 0.8 q`` where ``q`` is each entry's rank percentile of ``log(density)`` (ties: stable order)."""
    n = len(density)
    order = np.argsort(np.argsort(np.log(np.maximum(density, 1e-30)), kind="stable"), kind="stable")
    return 0.1 + 0.8 * order / max(n - 1, 1)


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
        seconds: search wall time (resumed runs add up: earlier processes' seconds included).
        resumed_seconds: the part of ``seconds`` spent by the earlier processes a resumed search continues.
        settings: the EvoQConfig as a dict.
        sensitivity_seconds: wall time of the sensitivity table (set by :func:`mixq.evoq.bitsearch`; 0 when
            the table was given).
        layer_passes: ``{"computed", "replayed"}``: quantized-layer forwards of this process's fitness
            evaluations that were computed, and that the prefix cache answered (both 0 when a Ray executor ran them).
        bitops: BitOps per sample of the best configuration (None when no cost model was given).
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
    resumed_seconds: float = 0.0
    sensitivity_seconds: float = 0.0
    layer_passes: dict = field(default_factory=dict)
    bitops: float | None = None

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


# Run settings a pipeline stores in its checkpoint's signature that the search does not depend on (calibration
# and the uniform baseline come after it): an unfinished search resumes when only they changed.
NOT_SEARCH_SETTINGS = ("calibrate", "calibration", "evaluate_uniform")


def _search_settings(signature: dict) -> dict:
    return {k: v for k, v in signature.items() if k not in NOT_SEARCH_SETTINGS}


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

    def load(self, finished_hint: str | None = None) -> tuple[EvolutionState | None, float]:
        """The saved state and seconds already spent, or ``(None, 0.0)`` when there is no checkpoint.

        Args:
            finished_hint: given when the checkpoint belongs to a finished run: then every setting must match,
                the ones applied after the search (:data:`NOT_SEARCH_SETTINGS`) too, and a mismatch names this
                hint; otherwise an unfinished search resumes when only those changed.

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
        signature = signature if isinstance(signature, dict) else {}
        if finished_hint is not None:
            check_signature(signature, self.signature, f"search checkpoint {name!r} belongs to a finished run that",
                            f"{RESUME_HINT}; {finished_hint}")
        check_signature(_search_settings(signature), _search_settings(self.signature),
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


def search_signature(layers: list[str], limit: float, config: EvoQConfig, extra: dict | None = None,
                     ops_limit: float | None = None) -> dict:
    """What a search checkpoint must match to be resumed: layers, bit-param limit, settings but iterations.

    Args:
        layers: the quantized layers, in genome order.
        limit: the budget as a bound on sum(params x bits).
        config: search settings (``iterations`` is left out: a finished search may be extended).
        extra: further settings the caller's result depends on (e.g. the run's task and quantizer).
        ops_limit: the BitOps limit, if any.

    Returns:
        The signature (JSON-serialisable).
    """
    settings = {k: v for k, v in asdict(config).items() if k != "iterations"}
    if settings["offspring"] == 1:
        del settings["offspring"]  # the steady state, as every checkpoint before the setting existed
    if settings["init"] == "uniform":
        del settings["init"]  # the paper's start, as every checkpoint before the setting existed
    if not settings["act_choices"]:
        del settings["act_choices"]  # weight bits only, as every checkpoint before activation genes
    else:
        settings["act_choices"] = list(settings["act_choices"])
    out = {**(extra or {}), "layers": list(layers), "settings": settings,
           "limit": limit if math.isfinite(limit) else None}
    if ops_limit is not None and math.isfinite(ops_limit):
        out["ops_limit"] = ops_limit
    return out


def _evolve(
    make: Callable[[Callable[[list[Genome]], list[float]] | None], TournamentEvolution],
    evaluate: FitnessEvaluator,
    worker_state: tuple[QuantModel, torch.Tensor, torch.Tensor],
    executor: Executor | None,
    ckpt: _SearchCheckpoint,
    elapsed: float,
    iterations: int,
    checkpoint_every: int,
    progress: bool,
    desc: str,
) -> tuple[TournamentEvolution, float]:
    """Run a search to its last iteration, checkpointing every ``checkpoint_every`` generations.

    Args:
        make: builds the search from its batch evaluator (None: ``evaluate`` one genome at a time).
        evaluate: this process's fitness evaluator.
        worker_state: ``(qm, x, reference)`` for the workers of a non-serial executor.
        executor: where each generation's children are evaluated (None: here, one by one).
        ckpt: the checkpoint file.
        elapsed: seconds already spent by the runs this one resumes.
        iterations: children in all (the progress bar's length).
        checkpoint_every: generations between checkpoints.
        progress: show a progress bar with the best fitness.
        desc: the bar's label.

    Returns:
        The finished search and its total seconds.
    """
    t0 = time.perf_counter()
    local = executor is None or isinstance(executor, SerialExecutor)
    # a serial executor maps over this process's evaluator (prefix cache and all); Ray over workers' copies
    pool = None if executor is None else executor.session(evaluate if local else worker_state)
    try:
        search = make(None if pool is None else (lambda genomes: pool.map(_fitness_item, genomes)))
        bar = progress_bar(total=iterations, initial=search.state.iteration, desc=desc, enabled=progress)
        generation = 0
        while not search.done:
            before = search.state.iteration
            search.step()
            generation += 1
            bar.update(search.state.iteration - before)
            if search.state.iteration // 10 > before // 10:
                bar.set_postfix(best_mse=f"{search.state.best[1]:.5f}", evals=search.state.evaluations)
            if generation % checkpoint_every == 0:
                ckpt.save(search, elapsed + time.perf_counter() - t0)
        bar.close()
    finally:
        if pool is not None:
            pool.close()
    seconds = elapsed + time.perf_counter() - t0
    ckpt.save(search, seconds)
    return search, seconds


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
    cost: CostModel | None = None,
    act_sensitivity: SensitivityTable | None = None,
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
        cost: the model's :class:`~mixq.quant.cost.CostModel` (its MACs); needed for a BitOps budget and for
            activation genes, and reported (``bitops``) when given.
        act_sensitivity: activation table for guided mutation of activation genes (``config.act_choices``).

    Returns:
        The :class:`EvoQResult`.
    """
    space = BitSpace(qm.layer_params, budget, config, sensitivity, macs=None if cost is None else list(cost.macs),
                     act_sensitivity=act_sensitivity, act_bits=qm.act_bits)
    if budget.bitops is None:
        start_bits = math.floor(budget.max_bit_params(qm.total_params) / qm.total_params + 1e-9)
    else:
        start_bits = space.uniform_bits()
    local = executor is None or isinstance(executor, SerialExecutor)  # fitness here: the prefix cache helps
    evaluate = FitnessEvaluator(qm, x, reference, prefix_mb=prefix_mb if local else 0.0)
    # a checkpoint resumes the same search; more iterations may be asked for (extends the run)
    ckpt = _SearchCheckpoint(checkpoint, search_signature(qm.layer_names, space.limit, config, signature,
                                                          space.ops_limit), config.iterations)
    state, elapsed = ckpt.load()
    search, seconds = _evolve(
        lambda evaluate_many: TournamentEvolution(
            config.evolution(), evaluate, space.mutate,
            lambda rng: space.initial(start_bits, rng, config.population,
                                      space.ilp_start() if config.init == "ilp" else None),
            state=state, evaluate_many=evaluate_many),
        evaluate, (qm, x, reference), executor, ckpt, elapsed, config.iterations, checkpoint_every, progress, "evoq")
    best, fit = search.state.best
    assert space.feasible(best), "search produced an over-budget configuration"
    qm.set_bits_tuple(best)
    n = len(qm.layer_names)
    cfg = BitConfig(dict(zip(qm.layer_names, best[:n])), dict(zip(qm.layer_names, best[n:])))
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
        resumed_seconds=elapsed,
        settings=asdict(config),
        layer_passes={"computed": evaluate.cache.computed, "replayed": evaluate.cache.replayed},
        bitops=None if cost is None else space.ops(best),
    )
