"""The primitive operations of EMQ proxy formulas, in registries (name -> operation).

A formula never runs text: its genotype names operations, and :mod:`mixq.emq.interpret` looks each
name up here. Every operation carries

* a function on torch tensors (float32 in, float32 out; a reduction returns a 0-d tensor),
* a shape rule used by the static compatibility screen (:func:`unary_shape`, :func:`binary_shape`),
  so impossible chains (a matrix product of an activation with a weight, ...) are rejected before any
  tensor is touched,
* a printable form for :meth:`mixq.emq.genotype.Genotype.formula`.

Domain errors (log of a negative, reciprocal of zero, ...) are not raised: they produce NaN / inf,
which the numeric screen catches. The unary and binary lists follow the operations named for EMQ's
search space (``../shared/papers/emq-notes.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Shape = tuple[int, ...]


class ShapeError(ValueError):
    """Two operands whose shapes an operation cannot combine (a static screening failure)."""


@dataclass(frozen=True)
class UnaryOp:
    """One unary operation.

    Attributes:
        name: registry name.
        fn: tensor -> tensor.
        reduces: the result is a scalar (0-d).
        nonneg: the result is never negative (so a following ``abs`` is a no-op).
        idempotent: applying it twice equals applying it once.
        text: printable form with ``{}`` for the operand.
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    reduces: bool = False
    nonneg: bool = False
    idempotent: bool = False
    text: str = "{}"


@dataclass(frozen=True)
class BinaryOp:
    """One binary operation.

    Attributes:
        name: registry name.
        fn: (a, b) -> tensor.
        kind: ``"elementwise"`` (equal shapes or a scalar operand), ``"matmul"`` (rows of the flattened
            operands, equal row lengths) or ``"distance"`` (equal element counts, scalar result).
        commutative: ``f(a, b) == f(b, a)``.
        text: printable form with ``{a}`` and ``{b}``.
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    kind: str
    commutative: bool
    text: str


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _znorm(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std(unbiased=False)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo)


def _std(x: torch.Tensor) -> torch.Tensor:
    return x.std(unbiased=False) if x.numel() > 1 else torch.zeros((), dtype=x.dtype)


UNARY: dict[str, UnaryOp] = {
    op.name: op
    for op in (
        UnaryOp("identity", lambda x: x, idempotent=True, text="{}"),
        UnaryOp("abs", torch.abs, nonneg=True, idempotent=True, text="|{}|"),
        UnaryOp("square", torch.square, nonneg=True, text="({})^2"),
        UnaryOp("sqrt", torch.sqrt, nonneg=True, text="sqrt({})"),
        UnaryOp("log", torch.log, text="log({})"),
        UnaryOp("abslog", lambda x: torch.log(x.abs()), text="log|{}|"),
        UnaryOp("exp", torch.exp, nonneg=True, text="exp({})"),
        UnaryOp("relu", torch.relu, nonneg=True, idempotent=True, text="relu({})"),
        UnaryOp("reciprocal", torch.reciprocal, text="1/({})"),
        UnaryOp("sigmoid", torch.sigmoid, nonneg=True, text="sigmoid({})"),
        UnaryOp("softmax", lambda x: torch.softmax(_flat(x), 0).reshape(x.shape), nonneg=True, text="softmax({})"),
        UnaryOp("logsoftmax", lambda x: torch.log_softmax(_flat(x), 0).reshape(x.shape), text="logsoftmax({})"),
        UnaryOp("normalize", _znorm, idempotent=True, text="znorm({})"),
        UnaryOp("minmax", _minmax, nonneg=True, idempotent=True, text="minmax({})"),
        UnaryOp("frobenius", torch.linalg.vector_norm, reduces=True, nonneg=True, text="||{}||_2"),
        UnaryOp("l1", lambda x: x.abs().sum(), reduces=True, nonneg=True, text="||{}||_1"),
        UnaryOp("normsum", lambda x: x.sum() / x.numel(), reduces=True, text="sum({})/n"),
        UnaryOp("mean", torch.mean, reduces=True, text="mean({})"),
        UnaryOp("std", _std, reduces=True, nonneg=True, text="std({})"),
    )
}


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(_flat(a), _flat(b), dim=0)


def _kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    la, lb = torch.log_softmax(_flat(a), 0), torch.log_softmax(_flat(b), 0)
    return (la.exp() * (la - lb)).sum()


BINARY: dict[str, BinaryOp] = {
    op.name: op
    for op in (
        BinaryOp("add", torch.add, "elementwise", True, "{a} + {b}"),
        BinaryOp("sub", torch.sub, "elementwise", False, "{a} - {b}"),
        BinaryOp("mul", torch.mul, "elementwise", True, "{a} * {b}"),
        BinaryOp("matmul", lambda a, b: _rows(a) @ _rows(b).T, "matmul", False, "{a} @ ({b})^T"),
        BinaryOp("hamming", lambda a, b: (torch.sign(_flat(a)) != torch.sign(_flat(b))).float().mean(),
                 "distance", True, "hamming({a}, {b})"),
        BinaryOp("kl", _kl, "distance", False, "KL({a} || {b})"),
        BinaryOp("cosine", _cos, "distance", True, "cos({a}, {b})"),
        BinaryOp("l2dist", lambda a, b: torch.linalg.vector_norm(_flat(a) - _flat(b)), "distance", True,
                 "||{a} - {b}||_2"),
        BinaryOp("l1dist", lambda a, b: (_flat(a) - _flat(b)).abs().sum(), "distance", True, "||{a} - {b}||_1"),
        BinaryOp("mse", lambda a, b: (_flat(a) - _flat(b)).square().mean(), "distance", True, "mse({a}, {b})"),
    )
}

#: Final per-layer reductions (applied when the combined value is not yet a scalar).
REDUCE: dict[str, UnaryOp] = {name: UNARY[name] for name in ("mean", "normsum", "frobenius", "l1", "std")}
REDUCE["sum"] = UnaryOp("sum", torch.sum, reduces=True, text="sum({})")

#: Bit-aware aggregations over layers: ``G[l, b] = agg(s_lb, b)``; the score is ``sign * sum_l G[l, b_l]``.
AGGREGATE: dict[str, tuple[Callable[[float, int], float], str]] = {
    "bits": (lambda s, b: s * b, "b_l * {}"),
    "log-bits": (lambda s, b: s * math.log2(b), "log2(b_l) * {}"),
    "noise": (lambda s, b: -s * 4.0 ** (-b), "-4^(-b_l) * {}"),
    "direct": (lambda s, b: s, "{}"),
}


def unary_shape(name: str, shape: Shape) -> Shape:
    """Result shape of a unary operation.

    Args:
        name: operation name.
        shape: operand shape.

    Returns:
        ``()`` for reductions, else ``shape``.
    """
    return () if UNARY[name].reduces else shape


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def binary_shape(name: str, a: Shape, b: Shape) -> Shape:
    """Result shape of a binary operation, or :class:`ShapeError`.

    Args:
        name: operation name.
        a: first operand shape.
        b: second operand shape.

    Returns:
        The result shape.

    Raises:
        ShapeError: the operation cannot combine these shapes.
    """
    kind = BINARY[name].kind
    if kind == "elementwise":
        if a == b or b == ():
            return a
        if a == ():
            return b
        raise ShapeError(f"{name}: shapes {a} and {b} differ")
    if kind == "matmul":
        if len(a) < 2 or len(b) < 2:
            raise ShapeError(f"{name}: needs tensors of rank >= 2, got {a} and {b}")
        if _numel(a) // a[0] != _numel(b) // b[0]:
            raise ShapeError(f"{name}: row lengths of {a} and {b} differ")
        return (a[0], b[0])
    if _numel(a) != _numel(b) or _numel(a) < 2:
        raise ShapeError(f"{name}: needs equal element counts of at least 2, got {a} and {b}")
    return ()
