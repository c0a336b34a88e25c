"""An EMQ study that cannot leak: formulas evolved on one or several benchmarks, chosen on validation, tested once.

Protocol (every number in ``study.json`` says which part it comes from):

1. Each benchmark is cut once, with ``split_seed`` (independent of the evolution seeds), into a **train**
   part (the search's fitness), a **validation** part (choosing among formulas, seeds and hand-crafted
   proxies) and a **test** part, scored only after every choice is made. The formula sources are computed
   once per model from ``proxy_batch`` labelled training images (also drawn with ``split_seed``), so every
   seed sees the same inputs.
2. For each evolution seed, one search over all search benchmarks at once: a formula's fitness is the
   worst (``reduce="min"``) or mean Kendall over the benchmarks' train parts, minus ``size_penalty`` per
   operation of its canonical form (shorter formulas win ties and overfit less).
3. The seed's formula is the best on validation (same reduction, no penalty) among its ``finalists``
   best-on-train formulas; the study's formula is the best on validation among the seeds' formulas.
   The best hand-crafted proxy of each benchmark is chosen on its validation part too.
4. Then, once: every seed's formula, the study's formula and every hand-crafted proxy are scored on each
   benchmark's test part, with percentile-bootstrap intervals (configurations resampled) of the Kendall
   tau and of the gain over the best hand-crafted proxy. ``transfer`` benchmarks (not searched: the
   leave-one-architecture-out score) are scored on their test part; ``fresh`` benchmarks (another
   sampling seed of a searched or transfer model) are scored in full.

Files in ``out``: ``seed-S/search_state.json`` (each search's checkpoint; a rerun resumes it),
``study.json`` (the whole record, with settings and library versions), ``genotype.json`` (the study's formula,
what ``mixq allocate --proxy`` reads) and ``report.md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixq.bench import MQBench
from mixq.emq.genotype import Genotype
from mixq.emq.inputs import FormulaInputs, compute_inputs, source_summary
from mixq.emq.run import bench_sha256, screening_summary
from mixq.emq.search import STABILITY, EMQConfig, FormulaFitness, ScreenedFitness, correlation, run_search
from mixq.errors import MixqError
from mixq.evaluation.task import load_task
from mixq.fileio import atomic_write_json, atomic_write_text, locked
from mixq.paths import output_folder
from mixq.provenance import versions
from mixq.proxies import get_proxy, list_proxies
from mixq.proxies.cache import StatsCache, cached_stats
from mixq.proxies.rank import bootstrap_interval, rank_metrics
from mixq.quant.model import QuantModel

PARTS = ("train", "val", "test")
REDUCTIONS = ("min", "mean")
OBJECTIVES = ("kendall", "gain")


@dataclass(frozen=True)
class StudyConfig:
    """Settings of a study.

    Attributes:
        fractions: shares of each benchmark in its train / validation / test parts (sum 1).
        split_seed: seed of the three-way split and of the proxy images (fixed across evolution seeds).
        seeds: evolution seeds.
        reduce: how per-benchmark Kendalls combine into one fitness: ``"min"`` (worst) or ``"mean"``.
        objective: ``"kendall"`` (each benchmark's Kendall itself) or ``"gain"`` (its Kendall minus that of the
            benchmark's best hand-crafted proxy on the same part: on train for the fitness, on validation for
            the choices), so that no architecture's baseline sets the level the others need only match.
        size_penalty: fitness subtracted per operation of a formula's canonical form.
        finalists: best-on-train formulas per seed compared on validation.
        bootstrap: bootstrap resamples of each interval.
        confidence: level of the intervals.
        search: the formula search settings (its ``seed`` and ``train_fraction`` are replaced by the above).
    """

    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)
    split_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    reduce: str = "min"
    objective: str = "kendall"
    size_penalty: float = 0.002
    finalists: int = 10
    bootstrap: int = 2000
    confidence: float = 0.95
    search: EMQConfig = field(default_factory=EMQConfig)

    def __post_init__(self) -> None:
        f = tuple(float(v) for v in self.fractions)
        if len(f) != 3 or min(f) <= 0 or abs(sum(f) - 1) > 1e-9:
            raise MixqError(f"fractions must be three positive shares (train, validation, test) summing to 1, "
                            f"got {list(self.fractions)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise MixqError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        if self.reduce not in REDUCTIONS:
            raise MixqError(f"reduce must be one of {list(REDUCTIONS)}, got {self.reduce!r}")
        if self.objective not in OBJECTIVES:
            raise MixqError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.size_penalty < 0:
            raise MixqError(f"size penalty must be >= 0, got {self.size_penalty}")
        if self.finalists < 1:
            raise MixqError(f"finalists must be >= 1, got {self.finalists}")
        if self.bootstrap < 100:
            raise MixqError(f"bootstrap resamples must be >= 100, got {self.bootstrap}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        d = asdict(self)
        d["search"] = {k: v for k, v in self.search.to_dict().items() if k not in ("seed", "train_fraction")}
        d["fractions"], d["seeds"] = list(self.fractions), list(self.seeds)
        return d


def partition(n: int, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """A seeded three-way split of ``n`` items.

    Args:
        n: number of items.
        fractions: train / validation / test shares.
        seed: permutation seed.

    Returns:
        ``{"train", "val", "test"}`` sorted index arrays: disjoint, together ``0..n-1``.

    Raises:
        MixqError: a part would hold fewer than 3 items.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    cuts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
    small = {k: len(v) for k, v in cuts.items() if len(v) < 3}
    if small:
        raise MixqError(f"a benchmark of {n} configurations is too small for fractions {list(fractions)}: "
                        f"{small} (need at least 3 in each part)")
    return {k: np.sort(v) for k, v in cuts.items()}


def formula_size(g: Genotype) -> int:
    """Operations of a formula's canonical form: inputs, non-identity unary operations, the binary one.

    Args:
        g: the formula.

    Returns:
        The count (what ``size_penalty`` multiplies).
    """
    c = g.canonical()
    return len(c.inputs) + sum(op != "identity" for chain in c.unary for op in chain) + (c.binary is not None)


@dataclass
class StudyBench:
    """One benchmark loaded for a study: its configurations, their parts, and the model's formula sources.

    Attributes:
        path: the benchmark file.
        model: its model name.
        digest: :func:`~mixq.emq.run.bench_sha256` of its content.
        bits: ``(n, L)`` weight bits of every configuration.
        acc: ``(n,)`` their top-1.
        parts: part name -> index array (``"all"`` for a fresh benchmark).
        qm: the quantization-ready model (for hand-crafted proxies).
        x: the proxy images; y: their labels.
        inputs: the formula sources.
        seconds: time to compute the sources.
    """

    path: str
    model: str
    digest: str
    checkpoint: str
    bits: np.ndarray
    acc: np.ndarray
    parts: dict[str, np.ndarray]
    qm: QuantModel
    x: torch.Tensor
    y: torch.Tensor
    inputs: FormulaInputs
    seconds: float = 0.0
    _fitness: dict[tuple[str, str, float], FormulaFitness] = field(default_factory=dict, repr=False)

    def fitness(self, part: str, metric: str = "kendall", stability: float = STABILITY) -> FormulaFitness:
        """The formula fitness on one part (built once per part, metric and stability threshold)."""
        key = (part, metric, float(stability))
        if key not in self._fitness:
            idx = self.parts[part]
            self._fitness[key] = FormulaFitness(self.inputs, self.bits[idx], self.acc[idx], metric, stability)
        return self._fitness[key]

    def formula_scores(self, g: Genotype, part: str) -> np.ndarray:
        """A formula's scores of the configurations of one part."""
        ff = self.fitness(part)
        with np.errstate(all="ignore"):
            return ff.scores(ff.gains(g))

    def describe(self) -> dict[str, Any]:
        """What ``study.json`` records about the benchmark."""
        return {"path": self.path, "model": self.model, "sha256": self.digest, "entries": int(len(self.acc)),
                "parts": {k: int(len(v)) for k, v in self.parts.items()}, "inputs_seconds": self.seconds,
                "top1_range": [float(self.acc.min()), float(self.acc.max())]}


def load_bench(path: str | os.PathLike, config: StudyConfig, fresh: bool = False,
               data_root: str | os.PathLike | None = None, model_root: str | os.PathLike | None = None,
               like: StudyBench | None = None) -> StudyBench:
    """Read a benchmark, split it and compute its model's formula sources.

    Args:
        path: benchmark file.
        config: study settings (split, proxy images, sources).
        fresh: keep it whole (part ``"all"``) instead of splitting it.
        data_root: data folder.
        model_root: checkpoint folder.
        like: a loaded benchmark of the same model and checkpoint whose sources are reused.

    Returns:
        The :class:`StudyBench`.

    Raises:
        MixqError: an unreadable or too small benchmark, or one whose layers are not its model's.
    """
    with MQBench.open(path, readonly=True) as bench:
        entries = bench.entries()
        meta, model = bench.meta, bench.model
    if len(entries) < 3:
        raise MixqError(f"benchmark {str(path)!r} has {len(entries)} configurations; a study needs at least 3")
    bits = np.array([e.bits_tuple for e in entries])
    acc = np.array([e.top1 for e in entries], dtype=np.float64)
    parts = {"all": np.arange(len(entries))} if fresh else partition(len(entries), config.fractions,
                                                                      config.split_seed)
    checkpoint = str(meta.get("checkpoint_sha256"))
    if like is not None and (like.model, like.checkpoint) == (model, checkpoint):
        qm, x, y, inputs, seconds = like.qm, like.x, like.y, like.inputs, 0.0
    else:
        s = config.search
        task = load_task(model, samples=s.proxy_batch, seed=config.split_seed, data_root=data_root,
                         model_root=model_root, n_test=10)
        qm = QuantModel(task.model, calib=task.calib)
        x, y = task.calib, task.calib_set.labels
        t0 = time.perf_counter()
        inputs = compute_inputs(qm, qm.layer_names, x, y, sources=s.sources, hessian_samples=s.hessian_samples,
                                seed=config.split_seed)
        seconds = time.perf_counter() - t0
    if list(meta["layer_names"]) != qm.layer_names:
        raise MixqError(f"benchmark {str(path)!r} has other layers than model {model!r}")
    return StudyBench(str(path), model, bench_sha256(meta, entries), checkpoint, bits, acc, parts, qm, x, y,
                      inputs, seconds)


class MultiFitness(ScreenedFitness):
    """A formula's fitness over several benchmarks' train parts: worst or mean Kendall, minus a size penalty.

    Args:
        benches: the search benchmarks.
        reduce: ``"min"`` or ``"mean"``.
        size_penalty: subtracted per operation (:func:`formula_size`).
        metric: ``"kendall"`` or ``"spearman"``.
        offsets: subtracted from each benchmark's correlation before the reduction (the ``"gain"``
            objective: each benchmark's best hand-crafted correlation on its train part); default none.
        stability: the ``unstable`` screen's threshold on each benchmark (0 = off).
    """

    def __init__(self, benches: Sequence[StudyBench], reduce: str = "min", size_penalty: float = 0.0,
                 metric: str = "kendall", offsets: Sequence[float] | None = None,
                 stability: float = STABILITY) -> None:
        self.parts = [b.fitness("train", metric, stability) for b in benches]
        self.reduce, self.size_penalty = reduce, size_penalty
        self.offsets = [0.0] * len(self.parts) if offsets is None else [float(o) for o in offsets]
        if len(self.offsets) != len(self.parts):
            raise MixqError(f"{len(self.offsets)} offsets for {len(self.parts)} benchmarks")

    def assess(self, g: Genotype) -> tuple[float, str | None, np.ndarray | None]:  # noqa: D102
        fits, tables = [], []
        for part, offset in zip(self.parts, self.offsets):
            f, reason, gains = part.assess(g)
            if reason is not None:
                return f, reason, None
            fits.append(f - offset)
            tables.append(gains.ravel())
        return _reduce(fits, self.reduce) - self.size_penalty * formula_size(g), None, np.concatenate(tables)


def _reduce(values: Sequence[float], how: str) -> float:
    return float(min(values)) if how == "min" else float(np.mean(values))


def _finalists(state, k: int) -> list[tuple[Genotype, float]]:
    """The ``k`` best-on-train distinct formulas of a finished search."""
    scored = [(key, e.fitness) for key, e in state.cache.items() if e.reason is None and np.isfinite(e.fitness)]
    scored.sort(key=lambda kv: -kv[1])
    return [(state.genotypes[key], f) for key, f in scored[:k]]


def _validation(benches: Sequence[StudyBench], g: Genotype, offsets: dict[str, float]) -> dict[str, float]:
    """Validation Kendall of a formula per benchmark, minus the benchmark's offset (0 or the best hand-crafted)."""
    out = {}
    for b in benches:
        s = b.formula_scores(g, "val")
        ok = np.all(np.isfinite(s)) and np.ptp(s) > 0
        out[b.path] = correlation("kendall", s, b.acc[b.parts["val"]]) - offsets[b.path] if ok else float("nan")
    return out


def _handcrafted(benches: Sequence[StudyBench], names: Sequence[str], seed: int,
                 stats_cache: str | os.PathLike | None) -> dict[str, dict[str, np.ndarray | str]]:
    """Scores of every hand-crafted proxy on every configuration of each benchmark (or its error message).

    The statistics are computed once per model (and checkpoint), from the benchmark's proxy images, and kept
    in ``stats_cache`` when given.
    """
    hand: dict[str, dict[str, np.ndarray | str]] = {}
    stats_of: dict[tuple[str, str, str], Any] = {}
    for b in benches:
        cache = None
        if stats_cache is not None:
            cache = StatsCache(Path(stats_cache) / f"{b.model}.npz", b.checkpoint, b.qm.layer_names)
        per = {}
        for name in names:
            proxy = get_proxy(name)
            key = (b.model, b.checkpoint, name)
            if key not in stats_of:
                try:
                    stats_of[key] = cached_stats(b.qm, proxy, b.x, b.y, seed, cache)
                except MixqError as exc:
                    stats_of[key] = str(exc)
            st = stats_of[key]
            per[name] = st if isinstance(st, str) else proxy.score(st, b.bits)
        hand[b.path] = per
    return hand


def _best_handcrafted(b: StudyBench, scores: dict[str, np.ndarray | str], part: str) -> tuple[str | None, float]:
    """The hand-crafted proxy with the highest Kendall on one part of a benchmark, and that Kendall."""
    idx = b.parts[part]
    ok = {n: correlation("kendall", s[idx], b.acc[idx]) for n, s in scores.items()
          if not isinstance(s, str) and np.ptp(s[idx]) > 0}
    ok = {n: v for n, v in ok.items() if np.isfinite(v)}
    if not ok:
        return None, float("nan")
    best = max(ok, key=ok.get)
    return best, ok[best]


def _interval(scores, acc, config: StudyConfig, baseline=None) -> list[float] | None:
    """The bootstrap interval, or None where it is undefined (too few distinct configurations)."""
    lo, hi = bootstrap_interval(scores, acc, "kendall", baseline=baseline, n_resamples=config.bootstrap,
                                confidence=config.confidence, seed=config.split_seed)
    return [lo, hi] if np.isfinite(lo) and np.isfinite(hi) else None


def _scored(scores: np.ndarray, acc: np.ndarray, config: StudyConfig) -> dict[str, Any]:
    if not (np.all(np.isfinite(scores)) and np.ptp(scores) > 0):
        return {"error": "scores are constant or non-finite on these configurations"}
    m = rank_metrics(scores, acc)
    return {"kendall": m["kendall"], "spearman": m["spearman"], "kendall_ci": _interval(scores, acc, config)}


def run_study(
    search_benches: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: StudyConfig = StudyConfig(),
    transfer: Sequence[str | os.PathLike] = (),
    fresh: Sequence[str | os.PathLike] = (),
    baselines: bool | Sequence[str] = True,
    data_root: str | os.PathLike | None = None,
    model_root: str | os.PathLike | None = None,
    stats_cache: str | os.PathLike | None = None,
    progress: bool = True,
    loaded: Sequence[StudyBench] = (),
) -> dict[str, Any]:
    """Run the study protocol (module docstring) and write ``study.json`` and ``report.md``.

    Args:
        search_benches: benchmarks the formulas are evolved on (one per architecture, or one).
        out: output folder (locked for the run; each seed's search checkpoint there is resumed).
        config: study settings.
        transfer: benchmarks not searched, scored on their test part (leave-one-architecture-out).
        fresh: benchmarks of a searched or transfer model built with another sampling seed, scored in full.
        baselines: hand-crafted proxies to compare: True for every registered one, or names.
        data_root: data folder.
        model_root: checkpoint folder.
        stats_cache: folder of per-model ``.npz`` caches of hand-crafted statistics (reused and filled).
        progress: progress bars.
        loaded: benchmarks already loaded with :func:`load_bench` (matched by path; saves their sources).

    Returns:
        The ``study.json`` record.
    """
    if not search_benches:
        raise MixqError("a study needs at least one search benchmark")
    paths = [str(p) for p in [*search_benches, *transfer, *fresh]]
    if len(set(paths)) != len(paths):
        raise MixqError(f"a benchmark is named twice: {paths}")
    out = output_folder(out)
    with locked(out):
        return _study_locked(out, config, [str(p) for p in search_benches], [str(p) for p in transfer],
                             [str(p) for p in fresh], baselines, data_root, model_root, stats_cache, progress,
                             {b.path: b for b in loaded})


def _study_locked(out: Path, config: StudyConfig, search_paths: list[str], transfer_paths: list[str],
                  fresh_paths: list[str], baselines, data_root, model_root, stats_cache, progress,
                  loaded: dict[str, StudyBench]) -> dict[str, Any]:
    t_start = time.perf_counter()

    def get(path: str, is_fresh: bool = False, like: list[StudyBench] = ()) -> StudyBench:
        b = loaded.get(path)
        if b is not None and ("all" in b.parts) == is_fresh:
            return b
        with MQBench.open(path, readonly=True) as bench:
            model = bench.model
        twin = next((t for t in like if t.model == model), None)
        return load_bench(path, config, fresh=is_fresh, data_root=data_root, model_root=model_root, like=twin)

    search = [get(p) for p in search_paths]
    transfer = [get(p) for p in transfer_paths]
    fresh = [get(p, True, [*search, *transfer]) for p in fresh_paths]

    # hand-crafted proxies: statistics once per model, scores of every configuration
    names = list_proxies() if baselines is True else list(baselines or [])
    hand = _handcrafted([*search, *transfer, *fresh], names, config.split_seed, stats_cache)
    offsets_train = [0.0] * len(search)
    offsets_val = {b.path: 0.0 for b in search}
    if config.objective == "gain":
        if not names:
            raise MixqError("objective 'gain' needs hand-crafted baselines")
        for i, b in enumerate(search):
            name, offsets_train[i] = _best_handcrafted(b, hand[b.path], "train")
            name_val, offsets_val[b.path] = _best_handcrafted(b, hand[b.path], "val")
            if name is None or name_val is None:
                raise MixqError(f"objective 'gain': no hand-crafted proxy gives non-constant scores on "
                                f"{b.path!r}")
    fitness = MultiFitness(search, config.reduce, config.size_penalty, config.search.metric, offsets_train,
                           config.search.stability)
    signature = {"benches": {b.path: b.digest for b in search}, "split_seed": config.split_seed,
                 "fractions": list(config.fractions), "reduce": config.reduce,
                 "size_penalty": config.size_penalty}
    if config.objective != "kendall":  # absent for the default, so earlier checkpoints still resume
        signature["objective"] = config.objective
        signature["offsets"] = offsets_train

    seeds = []
    for seed in config.seeds:
        scfg = replace(config.search, seed=seed)
        folder = output_folder(out / f"seed-{seed}")
        state = run_search(scfg, fitness, folder / "search_state.json", progress=progress, signature=signature)
        rows = []
        for g, train_fit in _finalists(state, config.finalists):
            val = _validation(search, g, offsets_val)
            vals = list(val.values())
            rows.append({"genotype": g, "formula": g.formula(), "train_fitness": train_fit, "val": val,
                         "val_score": _reduce(vals, config.reduce) if np.all(np.isfinite(vals)) else float("-inf")})
        best = max(rows, key=lambda r: (r["val_score"], r["train_fitness"]))
        seeds.append({"seed": seed, "formula": best["formula"], "genotype": best["genotype"].to_dict(),
                      "size": formula_size(best["genotype"]), "train_fitness": best["train_fitness"],
                      "val": best["val"], "val_score": best["val_score"],
                      "finalists": [{k: v for k, v in r.items() if k != "genotype"} for r in rows],
                      "screening": screening_summary(state), "search_seconds": state.seconds,
                      "history": state.history, "_g": best["genotype"]})
    chosen = max(seeds, key=lambda s: (s["val_score"], s["train_fitness"]))

    # the choices are made; now each test part, once
    best_on_val: dict[str, str | None] = {}  # model -> best hand-crafted proxy on its validation part
    for b in [*search, *transfer]:
        best_on_val.setdefault(b.model, _best_handcrafted(b, hand[b.path], "val")[0])
    benches_out = []
    for role, group in (("search", search), ("transfer", transfer), ("fresh", fresh)):
        for b in group:
            part = "all" if role == "fresh" else "test"
            idx, acc = b.parts[part], b.acc[b.parts[part]]
            rows: dict[str, Any] = {}
            best_hand = best_on_val.get(b.model)  # a fresh benchmark: its model's choice
            for n, s in hand[b.path].items():
                rows[n] = {"error": s} if isinstance(s, str) else _scored(s[idx], acc, config)
            evolved = {}
            for srec in seeds:
                g = srec["_g"]
                s = b.formula_scores(g, part)
                rec = _scored(s, acc, config)
                if best_hand is not None and "error" not in rec and "error" not in rows[best_hand]:
                    base = hand[b.path][best_hand][idx]
                    rec["gain_over_best_handcrafted"] = rec["kendall"] - rows[best_hand]["kendall"]
                    rec["gain_ci"] = _interval(s, acc, config, baseline=base)
                evolved[f"seed-{srec['seed']}"] = rec
            evolved["chosen"] = evolved[f"seed-{chosen['seed']}"]
            kt = [e["kendall"] for k, e in evolved.items() if k != "chosen" and "kendall" in e]
            benches_out.append({**b.describe(), "role": role, "scored_part": part,
                                "best_handcrafted_on_val": best_hand, "handcrafted": rows, "evolved": evolved,
                                "evolved_kendall_over_seeds": {"mean": float(np.mean(kt)), "min": float(min(kt)),
                                                               "max": float(max(kt))} if kt else None})

    record = {
        "protocol": "train part: search fitness; validation part: choice of formula, seed and best hand-crafted "
                    "proxy; test part: scored once after every choice (fresh benchmarks: all of them)",
        "config": config.to_dict(),
        "search_benches": [b.path for b in search],
        "transfer_benches": [b.path for b in transfer],
        "fresh_benches": [b.path for b in fresh],
        "chosen_seed": chosen["seed"],
        "formula": chosen["formula"],
        "genotype": chosen["genotype"],
        "seeds": [{k: v for k, v in s.items() if k != "_g"} for s in seeds],
        "benches": benches_out,
        "inputs": {b.path: source_summary(b.inputs) for b in [*search, *transfer]},
        "total_seconds": time.perf_counter() - t_start,
        "versions": versions(),
    }
    atomic_write_json(out / "study.json", record)
    chosen["_g"].save(out / "genotype.json")
    atomic_write_text(out / "report.md", study_report(record))
    return record


def _fmt(rec: dict[str, Any] | None, ci: str = "kendall_ci", key: str = "kendall") -> str:
    if not rec or key not in rec:
        return "-" if not rec else "error"
    if rec.get(ci) is None:
        return f"{rec[key]:.3f} [undefined]"
    lo, hi = rec[ci]
    return f"{rec[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def _objective_text(config: dict[str, Any]) -> str:
    if config.get("objective", "kendall") == "gain":
        return "(Kendall - best hand-crafted Kendall on the same part)"
    return "Kendall"


def study_report(record: dict[str, Any]) -> str:
    """``report.md`` of a study: the chosen formula, per-seed validation, and the test table with intervals.

    Args:
        record: the ``study.json`` dict.

    Returns:
        Markdown text.
    """
    c = record["config"]
    lines = [f"# EMQ study: {', '.join(Path(p).name for p in record['search_benches'])}", "",
             f"Protocol: {record['protocol']}. Split {c['fractions']} (seed {c['split_seed']}); fitness = "
             f"{c['reduce']} {_objective_text(c)} over the search benchmarks' train parts - {c['size_penalty']} x "
             f"formula size; "
             f"{c['finalists']} finalists per seed; {int(100 * c['confidence'])} % percentile-bootstrap intervals "
             f"({c['bootstrap']} resamples of the configurations).", "",
             f"Chosen (seed {record['chosen_seed']}, best validation): `{record['formula']}`", "",
             "| seed | formula | size | train fitness | validation |", "| --- | --- | --- | --- | --- |"]
    for s in record["seeds"]:
        lines.append(f"| {s['seed']} | `{s['formula']}` | {s['size']} | {s['train_fitness']:.3f} | "
                     f"{s['val_score']:.3f} |")
    names = sorted({n for b in record["benches"] for n in b["handcrafted"]})
    heads = [f"{Path(b['path']).stem} ({b['role']}, {b['scored_part']}, n={b['parts'][b['scored_part']]})"
             for b in record["benches"]]
    lines += ["", "Kendall tau on the scored part [95 % interval]:", "",
              "| proxy | " + " | ".join(heads) + " |", "| --- |" + " --- |" * len(heads)]
    lines.append("| evolved (chosen) | " + " | ".join(_fmt(b["evolved"]["chosen"]) for b in record["benches"]) + " |")
    for s in record["seeds"]:
        lines.append(f"| evolved, seed {s['seed']} | "
                     + " | ".join(_fmt(b["evolved"][f"seed-{s['seed']}"]) for b in record["benches"]) + " |")
    for n in names:
        cells = []
        for b in record["benches"]:
            mark = " *" if b["best_handcrafted_on_val"] == n else ""
            cells.append(_fmt(b["handcrafted"].get(n)) + mark)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("| gain of chosen over * | " + " | ".join(
        _fmt(b["evolved"]["chosen"], "gain_ci", "gain_over_best_handcrafted") for b in record["benches"]) + " |")
    lines += ["", "`*` = best hand-crafted proxy on the validation part of that model's searched or transfer "
              "benchmark.", ""]
    return "\n".join(lines)
