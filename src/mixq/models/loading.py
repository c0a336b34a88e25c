"""Build registered models with their checkpoints, or user models given as ``package.module:function``.

Checkpoints are always read with ``torch.load(..., weights_only=True)``: no arbitrary unpickling.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mixq.errors import MixqError
from mixq.models.registry import ModelSpec, get_model_spec
from mixq.paths import DEMO_DIR, resolve_model_root

_REF_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_MAX_KEYS_SHOWN = 5


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks.

    Args:
        path: the file.

    Returns:
        64 lowercase hex digits.

    Raises:
        MixqError: when the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise MixqError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
    return digest.hexdigest()


def _load_error(exc: Exception) -> str:
    """One line for a failed ``torch.load``: torch's weights-only refusal is a page; keep its reason."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        reason = next((ln.strip() for ln in text.split("WeightsUnpickler error:", 1)[1].splitlines() if ln.strip()),
                      "")
        return f"not a checkpoint torch.load(weights_only=True) can read ({reason})"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}"


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from a checkpoint file safely (``weights_only=True``, on the CPU).

    Accepts a plain state_dict (name -> tensor) or a dict holding one under ``"state_dict"``; a
    ``module.`` prefix (from ``nn.DataParallel``) on every key is stripped.

    Args:
        path: checkpoint file.

    Returns:
        The state_dict, name -> tensor.

    Raises:
        MixqError: when the file is missing, unreadable, not a torch checkpoint, or holds no state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise MixqError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and I/O errors all mean the same to the user
        raise MixqError(f"cannot read checkpoint {str(path)!r}: {_load_error(exc)}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise MixqError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__}, expected a state_dict "
            f"(a dict of name -> tensor, or a dict with a 'state_dict' key)"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise MixqError(
            f"checkpoint {str(path)!r} is not a state_dict: entries {bad[:_MAX_KEYS_SHOWN]!r} are not "
            f"name -> tensor"
        )
    if all(k.startswith("module.") for k in obj):
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """``load_state_dict(strict=True)`` with mismatches reported as one MixqError."""
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        msg = str(exc).strip().replace("\n\t", " ")
        raise MixqError(f"checkpoint {source} does not fit {what}: {msg[:800]}") from exc
    if result.missing_keys or result.unexpected_keys:
        parts = []
        for label, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)):
            if keys:
                more = ", ..." if len(keys) > _MAX_KEYS_SHOWN else ""
                parts.append(f"{len(keys)} {label} keys ({', '.join(keys[:_MAX_KEYS_SHOWN])}{more})")
        raise MixqError(f"checkpoint {source} does not fit {what}: {'; '.join(parts)}")


def checkpoint_path(spec: ModelSpec, model_root: str | os.PathLike | None) -> Path:
    """Where the checkpoint of ``spec`` is: package weights, model root, or the embedded demo copy."""
    if spec.weights_path is not None:
        return Path(spec.weights_path())
    if spec.checkpoint is None:
        raise MixqError(f"model {spec.name!r} has no checkpoint; use pretrained=False")
    root = resolve_model_root(model_root)
    if root is None:
        demo = DEMO_DIR / f"{spec.name}.pt"
        if demo.is_file():
            return demo
        raise MixqError(
            f"no model root was found for model {spec.name!r} (expected a folder holding "
            f"{spec.checkpoint}); give one with --model-root DIR or $MIXQ_MODELS"
        )
    path = root / spec.checkpoint
    if not path.is_file():
        raise MixqError(
            f"checkpoint {str(path)!r} for model {spec.name!r} does not exist (model root {str(root)!r})"
        )
    return path


def create_model(
    name: str, model_root: str | os.PathLike | None = None, pretrained: bool = True
) -> nn.Module:
    """Build a registered model, load its checkpoint strictly, and put it in eval mode.

    Args:
        name: registry name (see :func:`mixq.models.list_models`).
        model_root: folder holding ``cifar10/`` and ``imagenet/``; ``None`` looks up ``$MIXQ_MODELS``
            and ``../shared/models``, then falls back to the embedded demo checkpoint (resnet20-jpeg).
        pretrained: load the checkpoint; ``False`` returns randomly initialised weights.

    Returns:
        The model, in eval mode, on the CPU.

    Raises:
        MixqError: unknown name, no model root, missing/corrupt/unreadable checkpoint, key mismatch,
            or a missing optional package.
    """
    spec = get_model_spec(name)
    model = spec.builder()
    if pretrained:
        path = checkpoint_path(spec, model_root)
        if spec.sha256_prefix is not None:
            digest = sha256_file(path)
            if not digest.startswith(spec.sha256_prefix):
                raise MixqError(
                    f"checkpoint {str(path)!r} is corrupt or not the expected file: sha256 starts with "
                    f"{digest[: len(spec.sha256_prefix)]}, expected {spec.sha256_prefix}"
                )
        state_dict = load_state_dict_file(path)
        _load_strict(model, state_dict, repr(str(path)), f"model {name!r}")
    if spec.finalize is not None:
        model = spec.finalize(model)
    return model.eval()


def load_user_model(ref: str, checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """Build a model from ``package.module:function`` and optionally load a state_dict into it.

    The module is imported with :func:`importlib.import_module` (the current directory is searched
    too), the function is called with no arguments and must return an ``nn.Module``.

    Args:
        ref: ``"package.module:function"``.
        checkpoint: optional state_dict file (plain, or a dict with a ``state_dict`` key; a leading
            ``module.`` is stripped), loaded strictly.

    Returns:
        The model, in eval mode.

    Raises:
        MixqError: bad ref syntax, import failure, missing or non-callable attribute, a function that
            fails or returns no ``nn.Module``, or a checkpoint that cannot be read or does not fit.
    """
    if not isinstance(ref, str) or not _REF_RE.match(ref):
        raise MixqError(
            f"model reference {ref!r} is not of the form 'package.module:function' "
            f"(dotted Python identifiers, one colon, a function name)"
        )
    module_name, func_name = ref.split(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MixqError(f"cannot import module {module_name!r} of model reference {ref!r}: {exc}") from exc
    except Exception as exc:
        raise MixqError(
            f"importing module {module_name!r} of model reference {ref!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    func = getattr(module, func_name, None)
    if func is None:
        raise MixqError(f"module {module_name!r} has no attribute {func_name!r} (model reference {ref!r})")
    if not callable(func):
        raise MixqError(f"{ref!r} is a {type(func).__name__}, expected a function returning an nn.Module")
    try:
        model = func()
    except Exception as exc:
        raise MixqError(f"calling {ref}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise MixqError(f"{ref}() returned a {type(model).__name__}, expected a torch.nn.Module")
    if checkpoint is not None:
        state_dict = load_state_dict_file(checkpoint)
        _load_strict(model, state_dict, repr(str(checkpoint)), f"model {ref!r}")
    return model.eval()
