"""OMPQ orthogonality proxy (Ma et al., AAAI 2023, "OMPQ: Orthogonal Mixed Precision Quantization")."""

from __future__ import annotations

import numpy as np
import torch

from mixq.errors import MixqError
from mixq.proxies.base import Proxy, capture_outputs, linear_in_bits
from mixq.proxies.registry import register_proxy


def linear_cka_matrix(features: list[torch.Tensor]) -> np.ndarray:
    """Pairwise linear CKA between feature matrices (Kornblith et al., ICML 2019).

    ``CKA(X, Y) = <K_c, L_c>_F / (||K_c||_F ||L_c||_F)`` with ``K = X X^T`` the sample Gram matrix
    and ``K_c = H K H`` its centred form, which equals ``||Y_c^T X_c||_F^2 / (||X_c^T X_c|| ||Y_c^T Y_c||)``
    but costs ``N x N`` per layer whatever the feature width.

    Args:
        features: ``(N, D_l)`` matrices (same N).

    Returns:
        ``(L, L)`` symmetric matrix with ones on the diagonal (zero rows for constant features).
    """
    grams = []
    for f in features:
        f = f.double()
        f = f - f.mean(dim=0, keepdim=True)  # centring the features centres the Gram matrix
        k = f @ f.T
        norm = k.norm()
        grams.append((k / norm).reshape(-1) if norm > 0 else torch.zeros_like(k).reshape(-1))
    g = torch.stack(grams)
    cka = (g @ g.T).numpy()
    np.fill_diagonal(cka, [1.0 if float(v.abs().sum()) > 0 else 0.0 for v in grams])
    return cka


@register_proxy("ompq")
class Ompq(Proxy):
    """OMPQ orthogonality, bit-aware: ``S(b) = mean_l exp(-beta * gamma_l) * b_l``.

    ``gamma_l = sum_{j != l} CKA(F_l, F_j)`` over the layers' output features ``F_l`` (flattened per
    sample) on one unlabelled mini-batch: a layer whose features are nearly orthogonal to all others
    carries unique information and gets a large importance ``exp(-beta * gamma_l)``. As in the EMQ
    notes, the importance is weighted by the bit-width and averaged over layers.

    Args:
        beta: temperature of the importance.
    """

    def __init__(self, beta: float = 1.0) -> None:
        self.beta = beta

    def _compute(self, model, modules, x, y, seed):  # noqa: D102
        if x.shape[0] < 2:
            raise MixqError("the OMPQ proxy needs a batch of at least 2 samples (CKA compares samples)")
        with torch.no_grad(), capture_outputs(modules) as outs:
            model(x)
        feats = [torch.cat([o.reshape(o.shape[0], -1) for o in calls], dim=1) for calls in outs]
        cka = linear_cka_matrix(feats)
        gamma = cka.sum(axis=1) - np.diag(cka)
        imp = np.exp(-self.beta * gamma)
        return linear_in_bits(imp / len(modules)), {"gamma": gamma, "importance": imp}
