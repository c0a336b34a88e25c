"""Training-free proxies that rank bit configurations (higher score = predicted more accurate).

    from mixq.proxies import get_proxy, list_proxies, stats_for
    proxy = get_proxy("hawq-v3")
    stats = stats_for(qm, proxy, x, y)            # one mini-batch, once
    scores = proxy.score(stats, bits)            # (n_configs, L) weight bits -> (n_configs,)
    costs = proxy.layer_costs(stats, [2, 3, 4])  # (L, 3), lower = better, for an integer program

Registered: ``bparams``, ``bops``, ``hawq-v1``, ``hawq-v2``, ``hawq-v3``, ``ompq``, ``qe``, ``sensitivity``
(EvoQ's single-layer output MSE), ``snip``, ``synflow``, ``fisher``. Every one is additive over layers (see
:mod:`mixq.proxies.base`).
"""

from mixq.proxies.registry import get_proxy, list_proxies, proxy_class, register_proxy  # isort: skip
from mixq.proxies import hawq, ompq, qe, saliency, sensitivity, size  # noqa: F401  (registers the proxies)
from mixq.proxies.base import BITS, LayerStats, Proxy, bits_matrix, stats_for

__all__ = [
    "BITS",
    "LayerStats",
    "Proxy",
    "bits_matrix",
    "get_proxy",
    "list_proxies",
    "proxy_class",
    "register_proxy",
    "stats_for",
]
