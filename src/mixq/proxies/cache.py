"""A file cache of proxy statistics (gain tables), so a growing benchmark can be re-ranked in seconds.

Statistics depend on the model, the proxy, the mini-batch and the seed, never on the benchmark, so
they are stored once per (proxy, batch size, seed) in an ``.npz`` file (numpy arrays only, loaded with
``allow_pickle=False``) together with the layer names and the checkpoint's sha256; an entry made for
another model or checkpoint is ignored, not reused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mixq.errors import MixqError
from mixq.proxies.base import LayerStats, Proxy, stats_for


class StatsCache:
    """Gain tables keyed by ``proxy|batch|seed``.

    Args:
        path: the ``.npz`` file (created on :meth:`save`).
        model_key: identifies the model (e.g. its checkpoint sha256); entries with another key are ignored.
        layer_names: the layers in column order.
    """

    def __init__(self, path: str | os.PathLike, model_key: str, layer_names: list[str]) -> None:
        self.path = Path(path)
        self.model_key = model_key
        self.layer_names = list(layer_names)
        self.entries: dict[str, tuple[np.ndarray, float]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("model_key") != self.model_key or meta.get("layer_names") != self.layer_names:
                    return
                for key, seconds in meta["seconds"].items():
                    self.entries[key] = (np.asarray(data[f"gains/{key}"], dtype=np.float64), float(seconds))
        except (OSError, ValueError, KeyError) as exc:
            raise MixqError(f"proxy statistics cache {str(self.path)!r} is corrupt ({exc}); delete it") from None

    @staticmethod
    def key(proxy: str, batch: int, seed: int) -> str:
        """Entry key."""
        return f"{proxy}|{batch}|{seed}"

    def get(self, proxy: str, batch: int, seed: int) -> LayerStats | None:
        """Cached statistics, or None.

        Args:
            proxy: proxy name.
            batch: mini-batch size used.
            seed: seed used.

        Returns:
            The statistics (``seconds`` is the original computation time) or None.
        """
        hit = self.entries.get(self.key(proxy, batch, seed))
        if hit is None:
            return None
        return LayerStats(proxy, tuple(self.layer_names), hit[0], {}, hit[1])

    def put(self, stats: LayerStats, batch: int, seed: int) -> None:
        """Add statistics (call :meth:`save` to write).

        Args:
            stats: computed statistics.
            batch: mini-batch size used.
            seed: seed used.
        """
        self.entries[self.key(stats.proxy, batch, seed)] = (np.asarray(stats.gains, dtype=np.float64), stats.seconds)

    def save(self) -> None:
        """Write the file (atomically)."""
        meta = {"model_key": self.model_key, "layer_names": self.layer_names,
                "seconds": {k: s for k, (_, s) in self.entries.items()}}
        arrays = {f"gains/{k}": g for k, (g, _) in self.entries.items()}
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, self.path)


def cached_stats(
    qm, proxy: Proxy, x, y, seed: int, cache: StatsCache | None = None
) -> LayerStats:
    """Statistics of ``proxy`` on ``qm`` from the cache, or computed (and stored, when a cache is given).

    Args:
        qm: the :class:`~mixq.quant.model.QuantModel`.
        proxy: the proxy.
        x: the mini-batch (its size is part of the cache key).
        y: its labels (passed only to proxies that need them).
        seed: seed of random vectors.
        cache: the cache, or None to always compute.

    Returns:
        The statistics (``seconds`` is the time of the original computation).
    """
    n = int(x.shape[0])
    if cache is not None and (hit := cache.get(proxy.name, n, seed)) is not None:
        return hit
    stats = stats_for(qm, proxy, x, y if proxy.needs_labels else None, seed=seed)
    if cache is not None:
        cache.put(stats, n, seed)
        cache.save()
    return stats
