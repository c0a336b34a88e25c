"""Rank proxies (registered ones or evolved genotypes) against a benchmark's accuracies.

    result = rank_proxies("results/mqbench-resnet20-jpeg.sqlite", ["hawq-v3", "runs/emq/genotype.json"])
    result["results"][0]["all"]["kendall"]
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mixq.bench import MQBench
from mixq.emq.proxy import resolve_proxy
from mixq.errors import MixqError
from mixq.evaluation.task import load_task
from mixq.executor import Executor, SerialExecutor
from mixq.proxies import list_proxies
from mixq.proxies.base import LayerStats, Proxy
from mixq.proxies.cache import StatsCache, cached_stats
from mixq.proxies.rank import rank_metrics
from mixq.quant.model import QuantModel


def rank_proxies(
    bench_path: str | os.PathLike,
    proxies: Sequence[str] | None = None,
    sample: int = 50,
    proxy_batch: int = 64,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    model_root: str | os.PathLike | None = None,
    stats_cache: str | os.PathLike | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Rank metrics of each proxy on a whole benchmark and on a seeded sample of it.

    Args:
        bench_path: MQ benchmark file.
        proxies: registry names or genotype files (default: every registered proxy).
        sample: size of the seeded sample of configurations.
        proxy_batch: calibration images for the proxy statistics.
        seed: seed of the sample, the calibration draw and the statistics.
        data_root: data folder.
        model_root: checkpoint folder.
        stats_cache: ``.npz`` file reusing / storing proxy statistics.
        executor: where the statistics of the proxies not in the cache are computed, one proxy per item
            (default: serially in this process); this process alone writes the cache.

    Returns:
        ``{"bench", "model", "entries", "sample", "results": [{"proxy", "stats_seconds", "score_seconds",
        "sample<N>": metrics, "all": metrics}, ...]}``.
    """
    bench = MQBench.open(bench_path, readonly=True)
    entries = bench.entries()
    if len(entries) < 3:
        raise MixqError(f"benchmark {str(bench_path)!r} holds {len(entries)} configurations; ranking needs at least 3")
    model = bench.meta.get("model")
    task = load_task(model, samples=max(proxy_batch, 1), seed=seed, data_root=data_root,
                     model_root=model_root, n_test=10)
    qm = QuantModel(task.model, calib=task.calib)
    if list(bench.meta["layer_names"]) != qm.layer_names:
        raise MixqError(f"benchmark {str(bench_path)!r} has other layers than model {model!r}")
    bits = np.array([e.bits_tuple for e in entries])
    acc = np.array([e.top1 for e in entries])
    picked = np.random.default_rng(seed).choice(len(entries), size=min(sample, len(entries)), replace=False)
    cache = None
    if stats_cache:
        cache = StatsCache(stats_cache, str(bench.meta.get("checkpoint_sha256")), qm.layer_names)
    names = list(proxies or list_proxies())
    resolved = [resolve_proxy(name) for name in names]
    n = min(proxy_batch, task.calib.shape[0])
    x, y = task.calib[:n], task.calib_set.labels[:n]
    stats: list[LayerStats | None] = [cache.get(p.name, n, seed) if cache else None for p in resolved]
    missing = [i for i, st in enumerate(stats) if st is None]

    def keep(k: int, st: LayerStats) -> None:  # in this process only: the one writer of the cache
        stats[missing[k]] = st
        if cache is not None:
            cache.put(st, n, seed)
            cache.save()

    if missing:
        with (executor or SerialExecutor()).session((qm, x, y, seed)) as pool:
            pool.map(_stats_item, [resolved[i] for i in missing], on_result=keep)
    results = []
    for name, proxy, st in zip(names, resolved, stats, strict=True):
        t0 = time.perf_counter()
        scores = proxy.score(st, bits)
        secs_score = time.perf_counter() - t0
        results.append({"proxy": name, "stats_seconds": st.seconds, "score_seconds": secs_score,
                        f"sample{len(picked)}": rank_metrics(scores[picked], acc[picked]),
                        "all": rank_metrics(scores, acc)})
    return {"bench": str(bench_path), "model": model, "entries": len(entries), "sample": len(picked),
            "results": results}


def _stats_item(state: tuple[QuantModel, Any, Any, int], proxy: Proxy) -> LayerStats:
    """One proxy's statistics on the mini-batch (a work item of the executor; the cache stays with the caller)."""
    qm, x, y, seed = state
    return cached_stats(qm, proxy, x, y, seed)
