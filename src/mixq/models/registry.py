"""A timm-style registry of the models mixq knows by name.

Each :class:`ModelSpec` says how to build the architecture, where its checkpoint lives (relative to
the model root, see :func:`mixq.paths.resolve_model_root`), how to check the file, and how the inputs
must be normalised.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mixq.errors import MixqError

DATASETS = ("cifar10", "imagenet")
STATE_DICT_FORMATS = ("plain", "module_prefixed")

_REGISTRY: dict[str, ModelSpec] = {}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build, load and feed one named model.

    Attributes:
        name: registry name, e.g. ``"resnet20-jpeg"``.
        builder: callable with no arguments returning the untrained ``nn.Module``.
        checkpoint: file relative to the model root (``"cifar10/resnet20-jpeg-0e7622d0.pt"``), or
            ``None`` when the weights come from a package (see ``weights_path``).
        sha256_prefix: the 8 hex digits of the file's sha256 that its name carries (``None``: no check).
        dataset: ``"cifar10"`` or ``"imagenet"``.
        mean: per-channel normalisation mean, applied to pixels in [0, 1].
        std: per-channel normalisation std.
        input_size: side of the square input (32 or 224).
        num_classes: classifier outputs.
        reference_top1: FP32 top-1 (%) published with the checkpoint.
        state_dict_format: ``"plain"`` (name -> tensor) or ``"module_prefixed"`` (a dict with a
            ``state_dict`` whose keys start with ``module.``).
        weights_path: for package-provided weights, a callable returning the checkpoint path.
        finalize: optional callable applied to the model after its weights are loaded (e.g. to make
            it fx-friendly); it returns the model to use.
    """

    name: str
    builder: Callable[[], nn.Module]
    checkpoint: str | None
    sha256_prefix: str | None
    dataset: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    num_classes: int
    reference_top1: float
    state_dict_format: str = "plain"
    weights_path: Callable[[], Path] | None = None
    finalize: Callable[[nn.Module], nn.Module] | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise MixqError(f"model spec name {self.name!r} must be a non-empty string")
        if self.dataset not in DATASETS:
            raise MixqError(f"model spec {self.name!r}: dataset {self.dataset!r} must be one of {DATASETS}")
        if self.state_dict_format not in STATE_DICT_FORMATS:
            raise MixqError(
                f"model spec {self.name!r}: state_dict_format {self.state_dict_format!r} must be one of "
                f"{STATE_DICT_FORMATS}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise MixqError(
                f"model spec {self.name!r}: mean and std must be 3 floats each, std > 0 "
                f"(got mean={self.mean}, std={self.std})"
            )
        if self.sha256_prefix is not None and not re.fullmatch(r"[0-9a-f]{8,64}", self.sha256_prefix):
            raise MixqError(
                f"model spec {self.name!r}: sha256_prefix {self.sha256_prefix!r} must be 8 to 64 "
                f"lowercase hex digits"
            )
        if self.checkpoint is not None and self.weights_path is not None:
            raise MixqError(f"model spec {self.name!r}: give checkpoint or weights_path, not both")


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry.

    Args:
        spec: the model's description.

    Returns:
        ``spec`` itself.

    Raises:
        MixqError: when a model of the same name is already registered.
    """
    if spec.name in _REGISTRY:
        raise MixqError(f"model name {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered models matching a shell-style pattern.

    Args:
        pattern: ``fnmatch`` pattern (case-sensitive), e.g. ``"resnet*"``.

    Returns:
        Sorted list of names.
    """
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_model_spec(name: str) -> ModelSpec:
    """Look up a registered model.

    Args:
        name: registry name, e.g. ``"resnet20-jpeg"``.

    Returns:
        Its :class:`ModelSpec`.

    Raises:
        MixqError: when no model has that name (the message lists the available ones).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise MixqError(f"unknown model {name!r}; expected one of: {', '.join(list_models())}") from None
