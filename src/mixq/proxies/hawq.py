"""Hessian proxies: HAWQ-V1 (top eigenvalue), HAWQ-V2 (trace), HAWQ-V3 (trace x quantization perturbation).

The Hessian is that of the mean cross-entropy on one labelled mini-batch with respect to each layer's
(folded, float) weight tensor; see :mod:`mixq.proxies.hessian`. The statistic's absolute value is used
in the scores: a slightly negative trace of a non-convex block would otherwise invert the ranking
(a missing ``abs()`` on traces was a known bug in public HAWQ-style code).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mixq.proxies.base import BITS, Proxy, linear_in_bits, weight_at_bits
from mixq.proxies.hessian import hutchinson_trace, top_eigenvalues
from mixq.proxies.registry import register_proxy


def _ce_loss_fn(model, x, y):
    return lambda: F.cross_entropy(model(x), y)


@register_proxy("hawq-v1")
class HawqV1(Proxy):
    """HAWQ-V1 (Dong et al., ICCV 2019) as an EMQ bit-aware baseline: ``S(b) = sum_l |lambda_max(H_l)| * b_l``.

    ``lambda_max`` by power iteration on the layer's Hessian block (Hessian-vector products by double
    backward), stopping at a relative change below ``tol`` or after ``iters`` steps (EMQ's release:
    100 and 1e-3). Sensitive layers given more bits score higher.

    Args:
        iters: maximum power iterations per layer.
        tol: relative tolerance.
    """

    needs_labels = True
    needs_grad = True

    def __init__(self, iters: int = 100, tol: float = 1e-3) -> None:
        self.iters = iters
        self.tol = tol

    def _compute(self, model, modules, x, y, seed):  # noqa: D102
        eig = top_eigenvalues(_ce_loss_fn(model, x, y), [m.weight for m in modules],
                              iters=self.iters, tol=self.tol, seed=seed)
        return linear_in_bits(np.abs(eig)), {"eigenvalue": eig}


@register_proxy("hawq-v2")
class HawqV2(Proxy):
    """HAWQ-V2 (Dong et al., NeurIPS 2020) as an EMQ bit-aware baseline: ``S(b) = sum_l |Tr(H_l)| * b_l``.

    ``Tr(H_l)`` by Hutchinson's estimator with ``n_samples`` Rademacher vectors, each one
    Hessian-vector product for all layers at once.

    Args:
        n_samples: Hutchinson samples.
    """

    needs_labels = True
    needs_grad = True

    def __init__(self, n_samples: int = 32) -> None:
        self.n_samples = n_samples

    def _compute(self, model, modules, x, y, seed):  # noqa: D102
        tr = hutchinson_trace(_ce_loss_fn(model, x, y), [m.weight for m in modules], self.n_samples, seed)
        return linear_in_bits(np.abs(tr)), {"trace": tr}


def quantization_perturbation(modules) -> np.ndarray:
    """``||Q_b(W_l) - W_l||_2^2`` for every layer and every bit-width of :data:`BITS` (0 at 32).

    Args:
        modules: Conv2d / Linear layers (their range method is used when they are quantized layers).

    Returns:
        ``(L, len(BITS))`` array.
    """
    out = np.zeros((len(modules), len(BITS)), dtype=np.float64)
    for i, m in enumerate(modules):
        w = m.weight.detach()
        for k, b in enumerate(BITS):
            out[i, k] = float((weight_at_bits(m, b) - w).double().pow(2).sum())
    return out


@register_proxy("hawq-v3")
class HawqV3(Proxy):
    """HAWQ-V3 (Yao et al., ICML 2021): ``S(b) = -sum_l (|Tr(H_l)| / n_l) * ||Q_{b_l}(W_l) - W_l||^2``.

    The average Hessian trace (Hutchinson, as HAWQ-V2) times the squared weight perturbation of
    per-channel asymmetric quantization (the layer's own range method), precomputed for every bit-width;
    ``n_l`` is the layer's weight count. Negated (HAWQ-V3 minimises it), so higher = better. This is
    the sum HAWQ-V3's integer program minimises under size / BOPs constraints: use :meth:`layer_costs`.

    Args:
        n_samples: Hutchinson samples.
    """

    needs_labels = True
    needs_grad = True

    def __init__(self, n_samples: int = 32) -> None:
        self.n_samples = n_samples

    def _compute(self, model, modules, x, y, seed):  # noqa: D102
        weights = [m.weight for m in modules]
        tr = hutchinson_trace(_ce_loss_fn(model, x, y), weights, self.n_samples, seed)
        n = np.array([w.numel() for w in weights], dtype=np.float64)
        with torch.no_grad():
            pert = quantization_perturbation(modules)
        return -(np.abs(tr) / n)[:, None] * pert, {"trace": tr, "perturbation": pert}
