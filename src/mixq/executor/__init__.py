"""Run many independent evaluations of one model, serially or on a pool of Ray actors.

Benchmark building, sensitivity tables, uniform sweeps and EvoQ's fitness evaluations all apply one function to
many items (bit configurations, table cells, genomes) with the same model and samples. They hand that work to
an :class:`Executor`::

    with make_executor("ray", workers=4) as ex:          # or make_executor() for the serial default
        with ex.session(state) as pool:                   # state: the model and samples, sent once
            results = pool.map(evaluate, configs, on_result=write_one)

``evaluate(state, item)`` must be a module-level function, deterministic in its arguments (it may not read
the state left by an earlier call), so results do not depend on which worker ran what: the serial executor
and a Ray pool of any size give the same results, returned in submission order (up to float rounding where
the thread counts differ: an actor runs torch on its own CPUs, one by default). ``on_result(index, result)``
runs in the calling process as each result arrives, so a file written from it has a single writer.
"""

from mixq.executor.base import EXECUTORS, Executor, SerialExecutor, Session
from mixq.executor.factory import make_executor

__all__ = ["EXECUTORS", "Executor", "SerialExecutor", "Session", "make_executor"]
