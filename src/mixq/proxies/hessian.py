"""Hessian-vector products, Hutchinson traces and power-iteration eigenvalues (PyHessian style).

All functions differentiate twice with :func:`torch.autograd.grad` (never ``.backward()``), so no
``.grad`` attribute is touched. ``loss_fn`` is a zero-argument callable returning a scalar loss; it is
called once per function call and the first-order gradient graph is reused for every product.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

LossFn = Callable[[], torch.Tensor]


def grads_with_graph(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """First derivatives of ``loss`` that can be differentiated again (zeros for unused parameters).

    Args:
        loss: a scalar.
        params: the tensors to differentiate by.

    Returns:
        One gradient per parameter, with its graph.
    """
    grads = torch.autograd.grad(loss, list(params), create_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def hessian_vector_product(
    loss: torch.Tensor | None,
    params: Sequence[torch.Tensor],
    v: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """``H v`` for the Hessian of ``loss`` with respect to ``params`` (double backward).

    Args:
        loss: scalar loss whose graph reaches ``params`` (ignored when ``grads`` is given).
        params: tensors requiring grad.
        v: one tensor per parameter, same shapes.
        grads: first-order gradients computed with ``create_graph=True``; pass them to reuse the graph
            across many products (the graph is always retained).

    Returns:
        One tensor per parameter: the blocks of ``H v``.
    """
    if grads is None:
        if loss is None:
            raise ValueError("hessian_vector_product needs a loss or precomputed grads")
        grads = grads_with_graph(loss, params)
    pairs = [(g, u) for g, u in zip(grads, v) if g.requires_grad]
    if not pairs:  # loss is linear in params: H = 0
        return [torch.zeros_like(p) for p in params]
    hv = torch.autograd.grad(
        [g for g, _ in pairs], list(params), grad_outputs=[u for _, u in pairs],
        retain_graph=True, allow_unused=True,
    )
    return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, params)]


def rademacher(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random +-1 tensor shaped like ``p`` (Hutchinson probe vectors).

    Args:
        p: the tensor whose shape, dtype and device to take.
        gen: the generator to draw from.

    Returns:
        The +-1 tensor.
    """
    r = torch.randint(0, 2, p.shape, generator=gen, dtype=torch.int8)
    return (r.to(p.dtype) * 2 - 1).to(p.device)


def hutchinson_trace(
    loss_fn: LossFn, params: Sequence[torch.Tensor], n_samples: int = 32, seed: int = 0
) -> np.ndarray:
    """Per-tensor Hessian trace estimates ``Tr(H_pp) ~ mean_s v_p^T (H v)_p`` with Rademacher ``v``.

    One Rademacher vector spans all tensors, so each sample is one Hessian-vector product for all of
    them; the cross-block terms ``v_p^T H_pq v_q`` have zero mean, so every per-tensor estimate is
    unbiased (Hutchinson 1990; HAWQ-V2, Dong et al. 2020; PyHessian, Yao et al. 2020).

    Args:
        loss_fn: zero-argument callable returning the scalar loss.
        params: tensors requiring grad.
        n_samples: number of Rademacher vectors.
        seed: seed of the vectors.

    Returns:
        ``(len(params),)`` float64 trace estimates (signed: a non-convex block can have a negative trace).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    gen = torch.Generator().manual_seed(seed)
    grads = grads_with_graph(loss_fn(), params)
    total = np.zeros(len(params), dtype=np.float64)
    for _ in range(n_samples):
        v = [rademacher(p, gen) for p in params]
        hv = hessian_vector_product(None, params, v, grads=grads)
        total += np.array([float((a * b).sum()) for a, b in zip(v, hv)])
    return total / n_samples


def top_eigenvalues(
    loss_fn: LossFn, params: Sequence[torch.Tensor], iters: int = 100, tol: float = 1e-3, seed: int = 0
) -> np.ndarray:
    """Dominant eigenvalue of each diagonal Hessian block ``H_pp`` by power iteration.

    The gradient graph is built once and shared by all blocks; each iteration is one double backward
    restricted to one tensor. Iteration stops when the Rayleigh quotient changes by less than
    ``tol`` relative (HAWQ, Dong et al. 2019; PyHessian's ``eigenvalues``), or after ``iters`` steps.

    Args:
        loss_fn: zero-argument callable returning the scalar loss.
        params: tensors requiring grad.
        iters: maximum power iterations per tensor.
        tol: relative tolerance on successive eigenvalue estimates.
        seed: seed of the starting vectors.

    Returns:
        ``(len(params),)`` float64 eigenvalues of largest magnitude (signed Rayleigh quotients).
    """
    gen = torch.Generator().manual_seed(seed)
    grads = grads_with_graph(loss_fn(), params)
    out = np.zeros(len(params), dtype=np.float64)
    for i, (p, g) in enumerate(zip(params, grads)):
        v = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
        v /= v.norm()
        eig = None
        for _ in range(iters):
            (hv,) = hessian_vector_product(None, [p], [v], grads=[g])
            new = float((v * hv).sum())
            norm = float(hv.norm())
            if norm == 0.0:
                eig = 0.0
                break
            v = hv / norm
            if eig is not None and abs(new - eig) <= tol * (abs(eig) + 1e-12):
                eig = new
                break
            eig = new
        out[i] = 0.0 if eig is None else eig
    return out


def top_eigenvalue(
    loss_fn: LossFn, param: torch.Tensor, iters: int = 100, tol: float = 1e-3, seed: int = 0
) -> float:
    """Dominant eigenvalue of the Hessian of ``loss_fn()`` with respect to one tensor (power iteration).

    Args:
        loss_fn: zero-argument callable returning the scalar loss.
        param: tensor requiring grad.
        iters: maximum iterations.
        tol: relative tolerance on successive estimates.
        seed: seed of the starting vector.

    Returns:
        The eigenvalue of largest magnitude (signed).
    """
    return float(top_eigenvalues(loss_fn, [param], iters=iters, tol=tol, seed=seed)[0])
