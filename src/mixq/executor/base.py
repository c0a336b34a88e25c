"""The executor interface, the serial default and the factory that picks a backend by name."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from mixq.errors import MixqError
from mixq.progress import progress_bar

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("serial", "ray")
DEVICES = ("auto", "cpu", "cuda")


def check_device_name(device: str) -> None:
    """Refuse a device name that is none of ``auto``, ``cpu``, ``cuda``, ``cuda:N``.

    Args:
        device: the name.

    Raises:
        MixqError: for any other value.
    """
    if not isinstance(device, str) or not (device in DEVICES or (device.startswith("cuda:")
                                                                and device[5:].isdigit())):
        raise MixqError(f"device must be one of {list(DEVICES)} or 'cuda:N', got {device!r}")


def resolve_device(device: str) -> torch.device:
    """The torch device a worker runs on.

    Args:
        device: ``"auto"`` (CUDA when this process sees a GPU, else CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``.

    Returns:
        The device.

    Raises:
        MixqError: an unknown device name, or CUDA asked for where none is available.
    """
    check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MixqError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use --device auto or cpu")
    return torch.device(device)


def to_device(state: Any, device: torch.device) -> Any:
    """``state`` with its modules and tensors on ``device`` (tuples, lists and dicts are walked).

    Modules are moved in place (``nn.Module.to``); other objects are returned unchanged.

    Args:
        state: what the evaluation function receives.
        device: target device.

    Returns:
        The moved state.
    """
    if isinstance(state, nn.Module):
        return state.to(device)
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, tuple):
        return tuple(to_device(s, device) for s in state)
    if isinstance(state, list):
        return [to_device(s, device) for s in state]
    if isinstance(state, dict):
        return {k: to_device(v, device) for k, v in state.items()}
    return state


class Session(abc.ABC):
    """Workers holding one state (model, samples), reused by every :meth:`map` call until closed."""

    @abc.abstractmethod
    def map(
        self,
        fn: Callable[[Any, T], R],
        items: Sequence[T],
        on_result: Callable[[int, R], None] | None = None,
        progress: bool = False,
        desc: str | None = None,
    ) -> list[R]:
        """``[fn(state, item) for item in items]``, in submission order.

        Args:
            fn: a module-level function of ``(state, item)``; deterministic in its arguments.
            items: the work items.
            on_result: called in this process as ``on_result(index, result)`` once per item, as results
                arrive (completion order; submission order for the serial executor).
            progress: show a progress bar.
            desc: the bar's label.

        Returns:
            The results, ``results[i]`` for ``items[i]``.
        """

    def close(self) -> None:
        """Release the workers."""
        return None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Executor(abc.ABC):
    """A backend that runs sessions: :class:`SerialExecutor` or :class:`~mixq.executor.ray_pool.RayExecutor`.

    Attributes:
        name: backend name (``"serial"`` or ``"ray"``).
        workers: number of parallel workers.
    """

    name: str = ""
    workers: int = 1

    @abc.abstractmethod
    def session(self, state: Any) -> Session:
        """Start workers that each hold ``state``.

        Args:
            state: what every call of the evaluation function receives first (a model, samples, ...).

        Returns:
            The :class:`Session`.
        """

    @property
    def local_device(self) -> torch.device:
        """Where this process's own copy of the state computes: the serial executor's device; CPU for Ray
        (whose workers each resolve the device themselves)."""
        return torch.device("cpu")

    def describe(self) -> dict[str, Any]:
        """What a result file records about how it was computed.

        Returns:
            ``{"executor", "workers"}``.
        """
        return {"executor": self.name, "workers": self.workers}

    def close(self) -> None:
        """Stop what this executor started."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SerialSession(Session):
    def __init__(self, state: Any) -> None:
        self.state = state

    def map(self, fn, items, on_result=None, progress=False, desc=None):  # noqa: D102
        results = []
        bar = progress_bar(total=len(items), enabled=progress, desc=desc, leave=False)
        try:
            for i, item in enumerate(items):
                r = fn(self.state, item)
                results.append(r)
                if on_result is not None:
                    on_result(i, r)
                bar.update(1)
        finally:
            bar.close()
        return results


class SerialExecutor(Executor):
    """The default: every item in this process, one after the other, on the caller's own objects.

    Args:
        device: where the state is moved when a session starts (``"cpu"`` leaves it where it is).
    """

    name = "serial"
    workers = 1

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._device = resolve_device(device)

    @property
    def local_device(self) -> torch.device:  # noqa: D102
        return self._device

    def session(self, state):  # noqa: D102
        if self.device != "cpu":
            state = to_device(state, self._device)
        return _SerialSession(state)
