"""Build an MQ benchmark: sample bit configurations, label each with its quantized top-1, store them.

The label of a configuration is the top-1 (%) on the test split (all of it unless ``n_test`` is
given) of the model quantized by mixq's foundation PTQ, which is deterministic and cheap:

* weights: per-output-channel asymmetric min/max, round-to-nearest, at the configuration's bits;
* activations: every quantized layer's input per-tensor asymmetric, 8-bit, range = min/max over
  ``samples`` (50) calibration images from the train split, drawn with ``seed``;
* BatchNorm folded into the preceding convolution; no reconstruction (no AdaRound / BRECQ).

(EMQ's MQ-Bench-101 used BRECQ block reconstruction instead, far too costly to label hundreds of
configurations on a CPU; absolute accuracies at 2 bits are therefore much lower here.)

Resuming: the configurations come from :func:`~mixq.bench.sampling.sample_configs` with the stored
sampling settings, so a rerun with the same arguments draws the same list and evaluates only those
not stored yet. Each label is committed as soon as it is measured, so killing a build loses at most
the configuration being evaluated.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from mixq.bench.sampling import DEFAULT_CHOICES, MODES, sample_configs
from mixq.bench.store import MQBench, utc_now
from mixq.errors import MixqError
from mixq.evaluation.metrics import accuracy
from mixq.evaluation.task import Task, load_task
from mixq.executor import Executor, SerialExecutor
from mixq.fileio import locked
from mixq.models import get_model_spec, sha256_file
from mixq.progress import progress_bar
from mixq.provenance import versions
from mixq.quant.model import QuantModel

ACT_BITS = 8
WEIGHT_RANGE = "minmax"

#: The quantizer settings stored with every benchmark (meta key ``quantizer``).
QUANTIZER: dict[str, Any] = {
    "name": "mixq foundation PTQ",
    "weights": "per-channel asymmetric min/max",
    "weight_range": WEIGHT_RANGE,
    "rounding": "round-to-nearest",
    "activations": f"per-tensor asymmetric min/max, {ACT_BITS}-bit",
    "act_bits": ACT_BITS,
    "bn": "folded",
    "ptq": "none (no reconstruction)",
    "layout": "channels_last",
}


def checkpoint_sha256(
    model: str, model_root: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None
) -> tuple[str | None, str | None]:
    """sha256 and file name of the checkpoint a model loads (the same file :func:`create_model` reads).

    Args:
        model: registry name or ``package.module:function``.
        model_root: checkpoint folder (as for :func:`mixq.evaluation.task.load_task`).
        checkpoint: state_dict file of a user model.

    Returns:
        ``(sha256, file name)``, or ``(None, None)`` when the model has no checkpoint file.
    """
    if ":" in model:
        if checkpoint is None:
            return None, None
        return sha256_file(checkpoint), Path(checkpoint).name
    from mixq.models.loading import checkpoint_path  # the resolution create_model uses (demo included)

    spec = get_model_spec(model)
    if spec.weights_path is None and spec.checkpoint is None:
        return None, None
    path = checkpoint_path(spec, model_root)
    return sha256_file(path), Path(path).name


def _channels_last(batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in batches:
        yield (x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x), y


def _evaluate(qm: QuantModel, task: Task, bits: Sequence[int], batch_size: int) -> float:
    """Quantized top-1 of one configuration (the seam tests monkeypatch).

    The model and its inputs are in channels-last layout (oneDNN's fast path on CPU, 1.6x faster on
    ResNet-20). Float sums then run in another order than in ``mixq eval``'s default layout, so a label
    can differ from ``mixq eval``'s top-1 of the same configuration by a few images in 10,000.
    """
    qm.set_bits_tuple(tuple(bits))
    with torch.inference_mode():
        return accuracy(qm, _channels_last(task.test_batches(batch_size)), progress=False)


def _label_item(state: tuple[QuantModel, Task, int], bits: tuple[int, ...]) -> tuple[float, float]:
    """One work item of a build, run on a worker: ``(top-1, seconds)`` of configuration ``bits``."""
    qm, task, batch_size = state
    t0 = time.perf_counter()
    top1 = _evaluate(qm, task, bits, batch_size)
    return top1, time.perf_counter() - t0


def _settings(
    model: str, n: int, seed: int, mode: str, samples: int, n_test: int | None, choices: Sequence[int],
    pinned_bits: int | None,
) -> dict[str, Any]:
    """The meta entries a resumed build must match."""
    return {
        "model": model,
        "sampling": {"mode": mode, "choices": sorted({int(c) for c in choices}), "pinned_bits": pinned_bits,
                     "seed": seed, "n": n},
        "quantizer": dict(QUANTIZER),
        "calibration_request": {"samples": samples, "seed": seed},
        "n_test": n_test,
    }


def _check_resume(bench: MQBench, want: dict[str, Any]) -> None:
    """Refuse to continue a benchmark built with other settings."""
    meta = bench.meta
    have = {
        "model": meta.get("model"),
        "sampling": meta.get("sampling"),
        "quantizer": meta.get("quantizer"),
        "calibration_request": {k: (meta.get("calibration") or {}).get(k) for k in ("samples", "seed")},
        "n_test": (meta.get("data") or {}).get("n_test"),
    }
    diffs = [f"{k}: file has {have[k]!r}, asked {want[k]!r}" for k in want if have[k] != want[k]]
    if diffs:
        raise MixqError(
            f"benchmark {str(bench.path)!r} was built with other settings ({'; '.join(diffs)}); rerun with "
            f"the same settings to resume it, or pick another file"
        )


#: Seconds a writer waits for another process's short hold of a benchmark's lock (creation, one append).
LOCK_TIMEOUT = 120.0


def bench_lock(path: str | os.PathLike) -> AbstractContextManager[Path]:
    """The lock writers of one benchmark file hold briefly (``.FILE.mixq.lock``): to create or open it, to append.

    Args:
        path: the benchmark file (it need not exist yet).

    Returns:
        A context manager; it raises :class:`MixqError` when another process holds the lock for
        :data:`LOCK_TIMEOUT` seconds.
    """
    return locked(path, what="benchmark file", timeout=LOCK_TIMEOUT,
                  hint="another process writes it; try again when it is done")


def build_benchmark(
    path: str | os.PathLike,
    model: str,
    n: int,
    seed: int = 0,
    mode: str = "emq",
    samples: int = 50,
    data_root: str | os.PathLike | None = None,
    model_root: str | os.PathLike | None = None,
    n_test: int | None = None,
    progress: bool = True,
    choices: Sequence[int] = DEFAULT_CHOICES,
    pinned_bits: int | None = 8,
    checkpoint: str | os.PathLike | None = None,
    batch_size: int = 500,
    shard: tuple[int, int] = (0, 1),
    executor: Executor | None = None,
) -> MQBench:
    """Create or resume a benchmark file and label every sampled configuration.

    Args:
        path: benchmark file (SQLite, see :mod:`mixq.bench.store`); created if absent, resumed if present.
        model: registry name or ``package.module:function``.
        n: number of configurations.
        seed: seed of both the configuration sampling and the calibration draw.
        mode: ``"emq"`` or ``"size-spread"`` (see :mod:`mixq.bench.sampling`).
        samples: calibration images for the activation ranges.
        data_root: data folder.
        model_root: checkpoint folder.
        n_test: evaluate on a class-balanced subset of this many test images (default: the full split).
        progress: show a progress bar with ETA.
        choices: bit-widths of the free layers.
        pinned_bits: bits of the first and last layer (None: they are free too).
        checkpoint: state_dict of a ``package.module:function`` model.
        batch_size: evaluation batch size.
        shard: ``(i, n)``: evaluate only the sampled configurations at positions ``i, i + n, ...``. Run n
            processes on one file with ``(0, n) .. (n-1, n)`` (e.g. one thread each: on a 2-core CPU two
            single-threaded shards label 1.2x faster than one two-threaded build); rerun a shard, or an
            unsharded build, to finish what a killed shard left.
        executor: where configurations are evaluated (default: a :class:`~mixq.executor.SerialExecutor`
            in this process). With a Ray executor the quantized model and the test images go into the
            object store once and a pool of actors labels configurations in parallel; this process alone
            writes the file, so labels never clash, and a worker lost mid-build costs only its unfinished
            configurations. Labels equal the serial ones (same model and images; an actor's one-thread float
            rounding has not moved a top-1 in our tests).

    Returns:
        The open benchmark, holding all ``n`` configurations.

    Raises:
        MixqError: bad arguments, an existing file that is not a benchmark or was built with other
            settings, or any model / data loading error.
    """
    _check_arguments(n, seed, mode, samples, batch_size, n_test, shard)
    path = Path(path)
    want = _settings(model, n, seed, mode, samples, n_test, choices, pinned_bits)
    with bench_lock(path):
        if path.exists():  # refuse other settings before loading anything
            with MQBench.open(path) as existing:
                _check_resume(existing, want)
    task = load_task(model, samples=samples, seed=seed, data_root=data_root, model_root=model_root,
                     n_test=n_test, checkpoint=checkpoint)
    qm = QuantModel(task.model, calib=task.calib, act_bits=ACT_BITS, weight_range=WEIGHT_RANGE)
    qm.to(memory_format=torch.channels_last)  # see _evaluate
    sha, ckpt_name = checkpoint_sha256(model, model_root, checkpoint)
    data = {"dataset": task.dataset, "split": getattr(task.test, "split", "test"), "n_test": n_test,
            "n_images": len(task.test)}
    executor = executor or SerialExecutor()
    session = {"started": utc_now(), "versions": versions(), "executor": executor.describe()}
    with bench_lock(path):  # another shard may have created the file meanwhile: open it then
        if not path.exists():
            meta = {
                "model": model,
                "checkpoint_sha256": sha,
                "checkpoint_file": ckpt_name,
                "layer_names": list(qm.layer_names),
                "layer_params": [int(p) for p in qm.layer_params],
                "quantizer": dict(QUANTIZER),
                "data": data,
                "calibration": {"samples": samples, "seed": seed,
                                "split": getattr(task.calib_set, "split", "train")},
                "sampling": want["sampling"],
                "versions": session["versions"],
                "sessions": [session],
                "created": session["started"],
            }
            bench = MQBench.create(path, meta)
        else:
            bench = MQBench.open(path)
            try:
                _check_resume(bench, want)
                _check_same_model(bench, qm, sha, data)
                bench.set_meta("sessions", list(bench.meta.get("sessions") or []) + [session])
            except BaseException:
                bench.close()
                raise
    try:
        configs = sample_configs(qm.layer_names, qm.layer_params, n, seed=seed, mode=mode, choices=choices,
                                 pinned_bits=pinned_bits)
        _label_pending(bench, qm, task, configs, n, shard, batch_size,
                       desc=f"bench {model}" + (f" shard {shard[0]}/{shard[1]}" if shard[1] > 1 else ""),
                       progress=progress, executor=executor)
    except BaseException:
        bench.close()
        raise
    return bench


def _check_arguments(n: int, seed: int, mode: str, samples: int, batch_size: int, n_test: int | None,
                     shard: tuple[int, int]) -> None:
    """One clear error for any malformed build argument."""
    i_shard, n_shards = shard
    if not (isinstance(n_shards, int) and isinstance(i_shard, int) and 0 <= i_shard < n_shards):
        raise MixqError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
    if mode not in MODES:
        raise MixqError(f"unknown sampling mode {mode!r}; expected one of {list(MODES)}")
    for label, value, low in (("number of configurations", n, 1), ("seed", seed, 0),
                              ("calibration samples", samples, 1), ("batch size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MixqError(f"{label} must be an integer >= {low}, got {value!r}")
    if n_test is not None and (isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1):
        raise MixqError(f"n_test must be a positive integer or None (full test split), got {n_test!r}")


def _label_pending(bench: MQBench, qm: QuantModel, task: Task, configs: list[tuple[int, ...]], n: int,
                   shard: tuple[int, int], batch_size: int, desc: str, progress: bool,
                   executor: Executor) -> None:
    """Label this shard's configurations that the file does not hold yet, committing each as it arrives."""
    i_shard, n_shards = shard
    pending = bench.pending(configs)
    mine = set(configs[i_shard::n_shards])  # by position in the sampled list: shards never overlap
    todo = [c for c in pending if c in mine]
    bar = progress_bar(total=n - len(pending) + len(todo), initial=n - len(pending), enabled=progress,
                       desc=desc, unit="cfg")

    def record(i: int, result: tuple[float, float]) -> None:  # in this process only: the one writer
        bits, (top1, seconds) = todo[i], result
        config = dict(zip(qm.layer_names, bits, strict=True))
        with bench_lock(bench.path):  # held for the check and the append only
            if bits not in bench:  # another process may have labelled it while this one was evaluating
                bench.add(bits, top1, avg_bits=qm.avg_bits(config), size_mb=qm.size_mb(config), seconds=seconds)
        bar.update(1)
        bar.set_postfix(top1=f"{top1:.2f}")

    try:
        if todo:
            with executor.session((qm, task, batch_size)) as session:
                session.map(_label_item, todo, on_result=record)
    finally:
        bar.close()


def _check_same_model(bench: MQBench, qm: QuantModel, sha: str | None, data: dict[str, Any]) -> None:
    """A resumed benchmark must describe the same layers, checkpoint and test split."""
    name = str(bench.path)
    if list(qm.layer_names) != bench.layer_names or [int(p) for p in qm.layer_params] != bench.layer_params:
        raise MixqError(f"benchmark {name!r} lists other layers than model {bench.model!r} has now; pick another "
                        f"file")
    stored = bench.meta.get("checkpoint_sha256")
    if stored != sha:
        raise MixqError(f"benchmark {name!r} was labelled with checkpoint sha256 {stored}, but the checkpoint "
                        f"found now has {sha}; use the same checkpoint or pick another file")
    have = bench.meta.get("data") or {}
    if have.get("dataset") != data["dataset"] or have.get("n_images") != data["n_images"]:
        raise MixqError(f"benchmark {name!r} was labelled on {have.get('n_images')} {have.get('dataset')} test "
                        f"images, but {data['n_images']} {data['dataset']} images were found now (another data "
                        f"root?); pick another file")
