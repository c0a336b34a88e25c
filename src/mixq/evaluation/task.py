"""A quantization task: a float model, its normalisation, calibration samples and test split.

This is where the model registry and the data readers meet, so that the CLI and scripts prepare
every run the same way::

    task = load_task("resnet20-jpeg", samples=50, seed=0)
    qm = QuantModel(task.model, calib=task.calib)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mixq.data import ImageSet, batches, calibration_set, normalize, test_set
from mixq.errors import MixqError
from mixq.evaluation.metrics import accuracy
from mixq.models import create_model, get_model_spec, load_user_model


@dataclass
class Task:
    """Everything a quantization run needs.

    Attributes:
        name: model name (registry name or ``package.module:function`` reference).
        model: the float model, eval mode.
        dataset: ``"cifar10"`` or ``"imagenet"``.
        mean: normalisation mean.
        std: normalisation std.
        calib: normalised calibration inputs ``(N, 3, H, W)``.
        calib_set: the calibration images (uint8) with their positions in the split.
        test: the evaluation images (uint8).
        seed: calibration sampling seed.
        eval_split: which split ``test`` holds: ``"test"`` (the data set's test images; for ImageNet the
            sample minus the calibration images) or ``"val"`` (CIFAR-10's validation split, carved from train).
    """

    name: str
    model: nn.Module
    dataset: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    calib: torch.Tensor
    calib_set: ImageSet
    test: ImageSet
    seed: int
    eval_split: str = "test"

    def test_batches(self, batch_size: int = 500) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised test batches.

        Args:
            batch_size: images per batch.

        Returns:
            Iterator of ``(x, y)``.
        """
        return batches(self.test, self.mean, self.std, batch_size)

    def top1(self, model: nn.Module, batch_size: int = 500, progress: bool = True, desc: str = "top-1") -> float:
        """Top-1 (%) of ``model`` on this task's test images.

        Args:
            model: classifier (float or quantized).
            batch_size: images per batch.
            progress: show a progress bar.
            desc: progress bar label.

        Returns:
            Top-1 accuracy in percent.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise MixqError(f"batch size must be a positive integer, got {batch_size!r}")
        n_batches = -(-len(self.test) // batch_size)
        return accuracy(model, self.test_batches(batch_size), total=n_batches, progress=progress, desc=desc)

    def identity(self) -> dict[str, object]:
        """What a result of this task depends on, for resume signatures.

        Readable settings (model, dataset, number of samples, seed, number of test images) beside sha256
        digests of the float model's ``state_dict``, the normalised calibration inputs and the test images,
        so another checkpoint, data root or normalisation shows up even when every flag is the same.

        Returns:
            ``{"model", "model_sha256", "dataset", "samples", "seed", "calib_sha256", "n_test", "test_sha256"}``.
        """
        out = {"model": self.name, "model_sha256": tensors_sha256(self.model.state_dict().items()),
               "dataset": self.dataset, "samples": int(self.calib.shape[0]), "seed": self.seed,
               "calib_sha256": tensors_sha256([("calib", self.calib)]), "n_test": len(self.test),
               "test_sha256": tensors_sha256([("images", self.test.images), ("labels", self.test.labels)])}
        if self.eval_split != "test":  # runs on the test split keep the signatures they always had
            out["eval_split"] = self.eval_split
        return out

    def split_text(self) -> str:
        """Which images ``test`` holds, in words, for result files and reports."""
        if self.eval_split == "val":
            return f"val ({len(self.test)} of the train images held out from calibration)"
        return "test" if self.dataset == "cifar10" else "sample minus calibration images"


def tensors_sha256(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 of named tensors: each name, dtype, shape and raw bytes, in order.

    Args:
        named: ``(name, tensor)`` pairs (e.g. ``state_dict().items()``).

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    for name, t in named:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _check_image_size(model: str, side: int, *sets: ImageSet) -> None:
    """A registered model is fed images of its own size; other sizes would run and give wrong accuracies."""
    for images in sets:
        h, w = (int(v) for v in images.images.shape[-2:])
        if (h, w) != (side, side):
            raise MixqError(f"model {model!r} expects {side}x{side} images, but the {images.split} images found "
                            f"are {h}x{w}; check --data-root")


def _floats3(values: Sequence[float] | None, what: str) -> tuple[float, float, float] | None:
    if values is None:
        return None
    if len(values) != 3:
        raise MixqError(f"{what} needs 3 values (one per RGB channel), got {len(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))


def load_task(
    model: str,
    samples: int = 50,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    model_root: str | os.PathLike | None = None,
    n_test: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    dataset: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    eval_split: str = "test",
) -> Task:
    """Load a model, draw its calibration samples and load its test split.

    Args:
        model: a registry name (``mixq.models.list_models()``) or a ``package.module:function``
            reference to a function returning an ``nn.Module`` (then ``dataset``, ``mean`` and ``std``
            say how to feed it; defaults: cifar10 with ImageNet mean/std).
        samples: number of calibration samples (from the train split; for ImageNet from the sample,
            excluded from the test images).
        seed: seed of the calibration draw.
        data_root: data folder (``--data-root`` / ``$MIXQ_DATA``).
        model_root: checkpoint folder (``--model-root`` / ``$MIXQ_MODELS``).
        n_test: evaluate on a class-balanced subset of this many test images (default all).
        checkpoint: state_dict file for a user model.
        dataset: dataset of a user model.
        mean: normalisation mean of a user model (3 floats, pixels in [0, 1]).
        std: normalisation std of a user model.
        eval_split: ``"test"`` or ``"val"`` (CIFAR-10 only: the fixed validation part of train, disjoint
            from every calibration draw; for choosing settings without touching the test split).

    Returns:
        The :class:`Task`.
    """
    if ":" in model:
        net = load_user_model(model, checkpoint)
        dataset = dataset or "cifar10"
        m = _floats3(mean, "--mean") or (0.485, 0.456, 0.406)
        s = _floats3(std, "--std") or (0.229, 0.224, 0.225)
    else:
        if checkpoint is not None:
            raise MixqError("--checkpoint is for user models (package.module:function); registry models "
                            "load their own checkpoint from the model root")
        spec = get_model_spec(model)
        net = create_model(model, model_root=model_root)
        dataset = spec.dataset
        m = _floats3(mean, "--mean") or spec.mean
        s = _floats3(std, "--std") or spec.std
    calib_set = calibration_set(dataset, n=samples, seed=seed, data_root=data_root)
    exclude = calib_set if dataset == "imagenet" else None
    if eval_split not in ("test", "val"):
        raise MixqError(f"evaluation split must be 'test' or 'val', got {eval_split!r}")
    if eval_split == "val":
        test = test_set(dataset, data_root=data_root, limit=n_test, split="val")
    else:
        test = test_set(dataset, data_root=data_root, limit=n_test, exclude=exclude)
    if ":" not in model:
        _check_image_size(model, get_model_spec(model).input_size, calib_set, test)
    return Task(
        name=model,
        model=net.eval(),
        dataset=dataset,
        mean=m,
        std=s,
        calib=normalize(calib_set.images, m, s),
        calib_set=calib_set,
        test=test,
        seed=seed,
        eval_split=eval_split,
    )
