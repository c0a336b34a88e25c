"""A pool of Ray actors that each hold the state once and evaluate items sent to them.

The state goes into Ray's object store once per session (``ray.put``); every actor of the pool fetches it
when it starts, moves it to its device and keeps it for all later calls. Each actor has at most
``PER_WORKER`` items in flight, so a slow worker never hoards the queue. An actor that dies (killed, out of
memory, node lost) is replaced by a new one, and only the items it had not finished are sent again; an item
that kills ``max_retries + 1`` workers in a row stops the run with an error naming it. An exception raised
by the evaluation function itself is not retried: it is raised in the caller as it was raised on the worker.
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Any

from mixq.errors import MixqError
from mixq.executor.base import Executor, Session, check_device_name
from mixq.progress import progress_bar

PER_WORKER = 2


def import_ray() -> Any:
    """The ``ray`` module, or one clear error saying how to install it.

    Returns:
        The module.

    Raises:
        MixqError: when Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise MixqError("the Ray executor needs Ray: pip install 'mixq[ray]' (or use --executor serial)") from None
    return ray


class _Worker:
    """The actor: holds one session's state on its device and applies functions to items."""

    def __init__(self, device: str, threads: int) -> None:
        import torch

        from mixq.executor.base import resolve_device

        torch.set_num_threads(max(1, threads))
        self.device = resolve_device(device)
        self.state: Any = None

    def set_state(self, state: Any) -> None:
        from mixq.executor.base import to_device

        self.state = to_device(state, self.device)

    def run(self, fn: Any, item: Any) -> Any:
        return fn(self.state, item)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor(Executor):
    """Sessions run on a pool of Ray actors.

    Args:
        workers: actors in each session's pool.
        address: Ray cluster to join (``"auto"`` or ``HOST:PORT``); None starts a local instance with
            ``workers * cpus_per_worker`` CPUs that :meth:`close` stops again. An already initialised Ray is
            used as it is and left running.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, resolved on each actor. A CUDA device makes
            each actor ask Ray for ``gpus_per_worker`` GPUs, so actors land where GPUs are.
        cpus_per_worker: CPUs each actor asks for (also its torch thread count).
        gpus_per_worker: GPUs each actor asks for when the device is CUDA (fractions share a GPU).
        max_retries: how many times an item is sent again after the worker running it died.
    """

    name = "ray"

    def __init__(
        self,
        workers: int = 2,
        address: str | None = None,
        device: str = "cpu",
        cpus_per_worker: int = 1,
        gpus_per_worker: float = 1.0,
        max_retries: int = 3,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise MixqError(f"workers must be a positive integer, got {workers!r}")
        check_device_name(device)
        self.ray = import_ray()
        self.workers, self.address, self.device = workers, address, device
        self.cpus_per_worker, self.max_retries = cpus_per_worker, max_retries
        self._started = False
        if not self.ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address is None:
                # workers of a local instance import what this process imports (user models, scripts' modules)
                path = os.pathsep.join(os.path.abspath(p or os.curdir) for p in sys.path)
                kwargs["num_cpus"] = workers * cpus_per_worker
                kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
            else:
                kwargs["address"] = address
            try:
                self.ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = "a local Ray instance" if address is None else f"Ray at {address!r}"
                raise MixqError(f"cannot start {where}: {exc}") from None
            self._started = True
        self._actor_cls: Any = None
        self.actors: list[Any] = []  # started with the first session, reused by the next ones
        has_gpus = float(self.ray.cluster_resources().get("GPU", 0.0)) > 0
        wants_gpu = device.startswith("cuda") or (device == "auto" and has_gpus)
        self.gpus_per_worker = float(gpus_per_worker) if wants_gpu else 0.0

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {"executor": self.name, "workers": self.workers, "address": self.address, "device": self.device}

    def session(self, state: Any) -> Session:  # noqa: D102
        return _RaySession(self, state)

    def new_actor(self, state_ref: Any = None) -> Any:
        """Start one actor, and give it a session's state when one is running.

        Args:
            state_ref: the state's object reference (None: none yet).

        Returns:
            The actor handle.
        """
        if self._actor_cls is None:
            self._actor_cls = self.ray.remote(_Worker).options(num_cpus=self.cpus_per_worker,
                                                               num_gpus=self.gpus_per_worker)
        actor = self._actor_cls.remote(self.device, self.cpus_per_worker)
        if state_ref is not None:
            actor.set_state.remote(state_ref)
        return actor

    def close(self) -> None:  # noqa: D102
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors = []
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False


class _RaySession(Session):
    def __init__(self, ex: RayExecutor, state: Any) -> None:
        self.ex, self.ray = ex, ex.ray
        self.state_ref = self.ray.put(state)  # once; every actor fetches it from the object store
        while len(ex.actors) < ex.workers:
            ex.actors.append(ex.new_actor())
        refs = [a.set_state.remote(self.state_ref) for a in ex.actors]
        for k, ref in enumerate(refs):
            try:
                self.ray.get(ref)
            except self.ray.exceptions.RayActorError:  # died since the last session: start a new one
                ex.actors[k] = ex.new_actor()
                self.ray.get(ex.actors[k].set_state.remote(self.state_ref))
        self.actors = ex.actors  # shared with the executor: a replaced actor stays replaced
        self.replaced = 0  # actors started again after one died

    def map(self, fn, items, on_result=None, progress=False, desc=None):  # noqa: D102
        ray = self.ray
        items = list(items)
        n = len(items)
        results: list[Any] = [None] * n
        fn_ref = ray.put(fn)
        queue = collections.deque(range(n))
        attempts = [0] * n
        generation = [0] * len(self.actors)  # bumped when an actor is replaced
        load = [0] * len(self.actors)
        inflight: dict[Any, tuple[int, int, int]] = {}  # ref -> (actor, generation, item)
        bar = progress_bar(total=n, enabled=progress, desc=desc, leave=False)
        try:
            while queue or inflight:
                for a, actor in enumerate(self.actors):
                    while queue and load[a] < PER_WORKER:
                        i = queue.popleft()
                        inflight[actor.run.remote(fn_ref, items[i])] = (a, generation[a], i)
                        load[a] += 1
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                a, gen, i = inflight.pop(ref)
                current = gen == generation[a]
                try:
                    r = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    raise exc.as_instanceof_cause() from None
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.ObjectLostError) as exc:
                    attempts[i] += 1
                    if attempts[i] > self.ex.max_retries:
                        raise MixqError(f"item {i} of {n} ({items[i]!r}) was lost with its worker "
                                        f"{attempts[i]} times; last error: {type(exc).__name__}") from None
                    queue.appendleft(i)
                    if current:  # the first of its lost items to come back: start a new actor in its place
                        self.ray.kill(self.actors[a], no_restart=True)
                        self.actors[a] = self.ex.new_actor(self.state_ref)
                        generation[a] += 1
                        load[a] = 0
                        self.replaced += 1
                    continue
                if current:
                    load[a] -= 1
                results[i] = r
                if on_result is not None:
                    on_result(i, r)
                bar.update(1)
        finally:
            bar.close()
            for ref in inflight:  # an error stopped the run: do not leave work queued on the actors
                try:
                    ray.cancel(ref, force=False)
                except Exception:  # noqa: BLE001 - best effort; the session's close kills the actors anyway
                    pass
        return results

    def pids(self) -> list[int]:
        """Process ids of the pool's actors (what a fault test kills)."""
        return self.ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:  # noqa: D102
        try:  # the actors stay for the next session; the state is dropped
            self.ray.get([a.set_state.remote(None) for a in self.ex.actors])
        except self.ray.exceptions.RayError:  # an actor died since: the next session replaces it
            pass
