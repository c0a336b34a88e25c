"""mixq: mixed-precision post-training quantization (EvoQ, EMQ) for any PyTorch model.

The face of the library, a handful of verbs::

    import mixq
    task = mixq.load_task("resnet20-jpeg", samples=50, seed=0)      # model, 50 train samples, test split
    qm = mixq.quantize(task.model, 4, task.calib)                    # uniform 4-bit weights, 8-bit activations
    result = mixq.evoq.search(task.model, task.calib, target_bits=3.0, seed=0)
    qm = mixq.calibrate(mixq.quantize(task.model, result.bits, task.calib), task.calib)
    print(mixq.evaluate(qm, task))                                   # top-1 %
    result.bits.save("config.json")                                  # {"conv1": 8, "layer1.0.conv1": 3, ...}

``mixq.emq`` (``score``, ``evolve``), ``mixq.allocate(...)`` (proxy + ILP), ``mixq.export(qm, "m.onnx")``
and ``mixq.load_quantized("m.pt")`` complete it; the packages
below hold the rest (``mixq.quant``, ``mixq.models``, ``mixq.data``, ``mixq.evaluation``, ``mixq.evoq``,
``mixq.bench``, ``mixq.proxies``, ``mixq.emq``, ``mixq.allocate``, ``mixq.reports``, ``mixq.export``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from mixq import allocate, bench, data, emq, evaluation, evoq, export, models, proxies, quant, reports
from mixq.bits import BitConfig, Budget
from mixq.errors import MixqError
from mixq.evaluation import Task, accuracy, load_task
from mixq.evoq.calibrate import CalibrationConfig
from mixq.evoq.calibrate import calibrate as _calibrate
from mixq.export import load_quantized
from mixq.models import create_model, list_models
from mixq.quant import QuantModel

__version__ = "0.1.0"

__all__ = [
    "BitConfig",
    "Budget",
    "CalibrationConfig",
    "MixqError",
    "QuantModel",
    "Task",
    "allocate",
    "bench",
    "calibrate",
    "create_model",
    "data",
    "emq",
    "evaluate",
    "evaluation",
    "evoq",
    "export",
    "list_models",
    "load_quantized",
    "load_task",
    "models",
    "proxies",
    "quant",
    "quantize",
    "reports",
]


def quantize(
    model: nn.Module,
    bits: int | BitConfig | Mapping[str, int] = 8,
    samples: torch.Tensor | None = None,
    *,
    act_bits: int = 8,
    weight_range: str = "minmax",
    fold_bn: bool = True,
) -> QuantModel:
    """Quantize a float model: fold BatchNorm, wrap every Conv2d / Linear, set the weight bits.

    The float model is copied, not changed. Weights are per-output-channel asymmetric, activations (the
    input of every quantized layer) per-tensor with ranges observed on ``samples``.

    Args:
        model: the float model, or a :class:`QuantModel` whose bits are then set in place.
        bits: one bit-width for every layer (2..8, 32 = float), or a per-layer mapping / :class:`BitConfig`
            (the ``config.json`` of a search, as saved by ``BitConfig.save``).
        samples: normalised calibration inputs ``(N, C, H, W)`` for the activation ranges; may be None only
            when ``act_bits == 32``.
        act_bits: activation bits (32 = float).
        weight_range: ``"minmax"``, ``"omse"`` or ``"aciq"`` (see :mod:`mixq.quant.ranges`).
        fold_bn: fold BatchNorm into the preceding convolution.

    Returns:
        The :class:`QuantModel` (an ``nn.Module``; ``print`` it to see each layer's bits).
    """
    if isinstance(model, QuantModel):
        qm = model
    else:
        if samples is None and act_bits != 32:
            raise MixqError(f"quantize needs samples (N, C, H, W) to observe the {act_bits}-bit activation "
                            "ranges; pass act_bits=32 for weight-only quantization")
        qm = QuantModel(model, calib=samples, act_bits=act_bits, weight_range=weight_range, fold_bn=fold_bn)
    qm.set_bits(bits)
    return qm


def calibrate(
    qmodel: QuantModel,
    samples: torch.Tensor,
    config: CalibrationConfig | None = None,
    *,
    progress: bool = True,
    **settings: object,
) -> QuantModel:
    """EvoQ feature calibration: fit the quantized weights to the float model's outputs and features.

    Args:
        qmodel: a :class:`QuantModel` with its bits set (changed in place).
        samples: the normalised calibration inputs ``(N, C, H, W)`` (the search's samples).
        config: calibration settings; default :class:`CalibrationConfig` updated with ``settings``.
        progress: show a progress bar (on a terminal only).
        **settings: fields of :class:`CalibrationConfig` to change, e.g. ``epochs=100, lr=1e-4``.

    Returns:
        ``qmodel``, calibrated.
    """
    if not isinstance(qmodel, QuantModel):
        raise MixqError(f"calibrate needs a QuantModel (from mixq.quantize), got {type(qmodel).__name__}")
    if config is None:
        config = CalibrationConfig(**settings)  # type: ignore[arg-type]
    elif settings:
        raise MixqError("give calibration settings either as config=CalibrationConfig(...) or as keywords, not both")
    _calibrate(qmodel, samples, config, progress=progress)
    return qmodel


def evaluate(
    model: nn.Module,
    data: Task | tuple[torch.Tensor, torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    batch_size: int = 500,
    progress: bool = True,
) -> float:
    """Top-1 accuracy (%) of a float or quantized model.

    Args:
        model: a classifier mapping ``(B, C, H, W)`` to ``(B, K)`` logits.
        data: a :class:`Task` (its test split), a pair of tensors ``(x (N, C, H, W), y (N,))``, or an
            iterable of such ``(x, y)`` batches.
        batch_size: batch size for a Task or a tensor pair.
        progress: show a progress bar (on a terminal only).

    Returns:
        Top-1 accuracy in percent.
    """
    if batch_size < 1:
        raise MixqError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(data, Task):
        return data.top1(model, batch_size, progress)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise MixqError(f"evaluate got {x.shape[0]} inputs but {y.shape[0]} labels")
        batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return accuracy(model, batches, total=len(batches), progress=progress)
    return accuracy(model, data, progress=progress)
