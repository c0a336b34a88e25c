"""Pick an executor backend by name (what ``--executor`` selects)."""

from __future__ import annotations

from mixq.errors import MixqError
from mixq.executor.base import EXECUTORS, Executor, SerialExecutor, check_device_name
from mixq.executor.ray_pool import RayExecutor


def make_executor(
    name: str = "serial",
    workers: int | None = None,
    address: str | None = None,
    device: str = "cpu",
) -> Executor:
    """An executor by name (what ``--executor``, ``--workers``, ``--address`` and ``--device`` select).

    Args:
        name: ``"serial"`` or ``"ray"``.
        workers: Ray actors in the pool (default 2; must be 1 or None for serial).
        address: Ray cluster address (``"auto"`` or ``HOST:PORT``); None starts a local Ray instance that
            stops with the executor.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, resolved on each worker.

    Returns:
        The executor (a context manager; close it to stop a local Ray).

    Raises:
        MixqError: an unknown name, a bad worker count, options that only Ray takes given for serial, or
            Ray missing.
    """
    if name not in EXECUTORS:
        raise MixqError(f"unknown executor {name!r}; expected one of {list(EXECUTORS)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise MixqError(f"workers must be a positive integer, got {workers!r}")
    check_device_name(device)  # whether CUDA is there is checked where the work runs
    if name == "serial":
        if workers not in (None, 1) or address is not None:
            raise MixqError("--workers and --address need --executor ray (the serial executor has one worker)")
        return SerialExecutor(device)
    return RayExecutor(workers=workers or 2, address=address, device=device)
