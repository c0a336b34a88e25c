"""EMQ proxy formulas as data: a frozen genotype with a JSON form, a readable formula and variation operators.

Two structures:

* ``tree`` (EMQ's main shape): two input sources, each through a chain of two unary operations, joined
  by one binary operation, reduced to one scalar per layer;
* ``linear``: one source through a chain of four unary operations, reduced to one scalar per layer.

The per-layer scalar ``s_l`` (``s_lb`` when the formula reads a bit-dependent source) is then
aggregated with the layer's bit-width: ``S(b) = sign * sum_l agg(s_l b_l, b_l)`` (see
:data:`mixq.emq.ops.AGGREGATE`). Higher ``S`` predicts higher accuracy.

The JSON file (``genotype.json``) is the saved form::

    {"format": "mixq-emq-genotype", "version": 1, "structure": "tree",
     "inputs": ["hessian", "qerror"], "unary": [["abs", "identity"], ["square", "identity"]],
     "binary": "mul", "reduce": "sum", "aggregate": "direct", "sign": -1}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixq.emq.inputs import BIT_DEPENDENT, LABELLED, SOURCES
from mixq.emq.ops import AGGREGATE, BINARY, REDUCE, UNARY
from mixq.errors import MixqError
from mixq.fileio import atomic_write_json

FORMAT = "mixq-emq-genotype"
VERSION = 1
STRUCTURES = {"tree": (2, 2), "linear": (1, 4)}
"""Structure -> (number of inputs, unary operations per input)."""

#: Sampling weights of the binary operations (EMQ's sibling project: sum / difference / product / matmul
#: about 0.6 / 0.3 / 0.05 / 0.05; the distances share a small remainder here).
BINARY_WEIGHTS = {"add": 0.3, "sub": 0.2, "mul": 0.3, "matmul": 0.04, "hamming": 0.02, "kl": 0.02,
                  "cosine": 0.03, "l2dist": 0.03, "l1dist": 0.03, "mse": 0.03}


@dataclass(frozen=True)
class Genotype:
    """One proxy formula.

    Attributes:
        structure: ``"tree"`` or ``"linear"``.
        inputs: source names (2 for a tree, 1 for linear), see :data:`mixq.emq.inputs.SOURCES`.
        unary: one chain of unary operation names per input (2 each for a tree, 4 for linear).
        binary: binary operation joining the two branches (tree only; None for linear).
        reduce: reduction to one scalar per layer, used when the combined value is not a scalar yet.
        aggregate: bit-aware aggregation over layers (:data:`mixq.emq.ops.AGGREGATE`).
        sign: +1 or -1, the direction of the score.
    """

    structure: str
    inputs: tuple[str, ...]
    unary: tuple[tuple[str, ...], ...]
    binary: str | None
    reduce: str
    aggregate: str
    sign: int = 1

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise MixqError(f"genotype structure {self.structure!r} is not one of {sorted(STRUCTURES)}")
        n_in, depth = STRUCTURES[self.structure]
        if len(self.inputs) != n_in or any(s not in SOURCES for s in self.inputs):
            raise MixqError(f"a {self.structure} genotype needs {n_in} input(s) from {list(SOURCES)}, "
                            f"got {list(self.inputs)}")
        if len(self.unary) != n_in or any(len(c) != depth for c in self.unary):
            raise MixqError(f"a {self.structure} genotype needs {n_in} chain(s) of {depth} unary operations, "
                            f"got {[list(c) for c in self.unary]}")
        bad = [op for c in self.unary for op in c if op not in UNARY]
        if bad:
            raise MixqError(f"unknown unary operation(s) {bad}; expected some of {sorted(UNARY)}")
        if self.structure == "tree" and self.binary not in BINARY:
            raise MixqError(f"unknown binary operation {self.binary!r}; expected one of {sorted(BINARY)}")
        if self.structure == "linear" and self.binary is not None:
            raise MixqError("a linear genotype has no binary operation (binary must be null)")
        if self.reduce not in REDUCE:
            raise MixqError(f"unknown reduction {self.reduce!r}; expected one of {sorted(REDUCE)}")
        if self.aggregate not in AGGREGATE:
            raise MixqError(f"unknown aggregation {self.aggregate!r}; expected one of {sorted(AGGREGATE)}")
        if self.sign not in (1, -1):
            raise MixqError(f"genotype sign must be 1 or -1, got {self.sign!r}")

    # ----------------------------------------------------------------- properties
    @property
    def bit_dependent(self) -> bool:
        """Whether the per-layer value depends on the bit-width (reads ``qerror`` or ``oerror``)."""
        return any(s in BIT_DEPENDENT for s in self.inputs)

    @property
    def needs_labels(self) -> bool:
        """Whether a source needs labelled data."""
        return any(s in LABELLED for s in self.inputs)

    # ----------------------------------------------------------------- printing
    def formula(self) -> str:
        """A readable formula, e.g. ``S(b) = -sum_l sum(|H| * (Q_b)^2)``.

        Returns:
            The formula text.
        """
        branches = []
        for src, chain in zip(self.inputs, self.unary):
            text = SOURCES[src] + ("_b" if src in BIT_DEPENDENT else "")
            for op in chain:
                text = UNARY[op].text.format(text) if op != "identity" else text
            branches.append(text)
        if self.structure == "tree":
            body = BINARY[self.binary].text.format(a=branches[0], b=branches[1])
        else:
            body = branches[0]
        if self._combines_to_scalar(self.unary):
            if self.structure == "tree" and BINARY[self.binary].kind == "elementwise":
                body = f"({body})"
        else:
            body = REDUCE[self.reduce].text.format(body)
        term = AGGREGATE[self.aggregate][1].format(body)
        return f"S(b) = {'-' if self.sign < 0 else ''}sum_l {term}"

    def __str__(self) -> str:
        return self.formula()

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON form (with format and version)."""
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        d["unary"] = [list(c) for c in self.unary]
        return {"format": FORMAT, "version": VERSION, **d}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "genotype") -> Genotype:
        """Parse and validate :meth:`to_dict` output.

        Args:
            data: parsed JSON.
            source: name for error messages.

        Returns:
            The genotype.

        Raises:
            MixqError: not a genotype, another version, or invalid fields.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise MixqError(f"{source} is not an EMQ genotype (expected \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise MixqError(f"{source} has genotype version {data.get('version')!r}; this mixq reads {VERSION}")
        try:
            return cls(
                structure=str(data["structure"]),
                inputs=tuple(str(s) for s in data["inputs"]),
                unary=tuple(tuple(str(o) for o in c) for c in data["unary"]),
                binary=None if data.get("binary") is None else str(data["binary"]),
                reduce=str(data["reduce"]),
                aggregate=str(data["aggregate"]),
                sign=int(data.get("sign", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MixqError(f"{source} is a malformed genotype: {exc!r}") from None
        except MixqError as exc:
            raise MixqError(f"{source}: {exc}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON file atomically (a temporary file, then a rename).

        Args:
            path: destination.
        """
        atomic_write_json(path, {**self.to_dict(), "formula": self.formula()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Genotype:
        """Read a JSON file written by :meth:`save`.

        Args:
            path: genotype file.

        Returns:
            The genotype.

        Raises:
            MixqError: missing, unreadable or invalid file.
        """
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise MixqError(f"cannot read genotype {str(path)!r}: {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MixqError(f"genotype {str(path)!r} is not valid JSON") from None
        return cls.from_dict(data, source=f"genotype {str(path)!r}")

    # ----------------------------------------------------------------- equivalence
    def canonical(self) -> Genotype:
        """An equivalent genotype in canonical form (used to detect equivalent formulas).

        Rules: identities and repeated idempotent operations are dropped, ``abs`` of a non-negative
        value is dropped, the operands of a commutative binary operation are sorted, and the reduction
        is fixed to ``"sum"`` when the combined value is already a scalar (it is then not applied).

        Returns:
            The canonical genotype (chains padded with ``identity`` to their length).
        """
        n_in, depth = STRUCTURES[self.structure]
        chains = []
        for chain in self.unary:
            out: list[str] = []
            for op in chain:
                if op == "identity":
                    continue
                if out and op == out[-1] and UNARY[op].idempotent:
                    continue
                if op == "abs" and out and UNARY[out[-1]].nonneg:
                    continue
                out.append(op)
            chains.append(tuple(out + ["identity"] * (depth - len(out))))
        branches = list(zip(self.inputs, chains))
        if self.structure == "tree" and BINARY[self.binary].commutative:
            branches.sort()
        reduce = self.reduce
        if self._combines_to_scalar(chains):
            reduce = "sum"
        return Genotype(self.structure, tuple(b[0] for b in branches), tuple(b[1] for b in branches),
                        self.binary, reduce, self.aggregate, self.sign)

    def _combines_to_scalar(self, chains: Sequence[Sequence[str]]) -> bool:
        reduced = [any(UNARY[o].reduces for o in c) for c in chains]
        if self.structure == "linear":
            return reduced[0]
        kind = BINARY[self.binary].kind
        return kind == "distance" or (kind == "elementwise" and all(reduced))

    def key(self) -> str:
        """Canonical JSON text (equal for equivalent genotypes)."""
        d = self.canonical().to_dict()
        return json.dumps(d, sort_keys=True)

    def genes(self) -> list[Any]:
        """Flat gene list (for crossover)."""
        return [*self.inputs, *[o for c in self.unary for o in c], self.binary, self.reduce, self.aggregate,
                self.sign]

    @classmethod
    def from_genes(cls, structure: str, genes: Sequence[Any]) -> Genotype:
        """Inverse of :meth:`genes`.

        Args:
            structure: ``"tree"`` or ``"linear"``.
            genes: flat gene list.

        Returns:
            The genotype.
        """
        n_in, depth = STRUCTURES[structure]
        inputs = tuple(genes[:n_in])
        ops = list(genes[n_in: n_in + n_in * depth])
        unary = tuple(tuple(ops[i * depth:(i + 1) * depth]) for i in range(n_in))
        binary, reduce, aggregate, sign = genes[n_in + n_in * depth:]
        return cls(structure, inputs, unary, binary, reduce, aggregate, int(sign))


# --------------------------------------------------------------------- variation
def _pick(rng: np.random.Generator, options: Sequence[Any], weights: Mapping[Any, float] | None = None) -> Any:
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.array([weights[o] for o in options], dtype=np.float64)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def random_genotype(
    rng: np.random.Generator, structure: str = "tree", sources: Sequence[str] = tuple(SOURCES)
) -> Genotype:
    """A uniformly drawn genotype (binary operations with :data:`BINARY_WEIGHTS`).

    Args:
        rng: numpy generator.
        structure: ``"tree"`` or ``"linear"``.
        sources: allowed input sources.

    Returns:
        The genotype.
    """
    n_in, depth = STRUCTURES[structure]
    unary = sorted(UNARY)
    return Genotype(
        structure=structure,
        inputs=tuple(_pick(rng, list(sources)) for _ in range(n_in)),
        unary=tuple(tuple(_pick(rng, unary) for _ in range(depth)) for _ in range(n_in)),
        binary=_pick(rng, sorted(BINARY), BINARY_WEIGHTS) if structure == "tree" else None,
        reduce=_pick(rng, sorted(REDUCE)),
        aggregate=_pick(rng, sorted(AGGREGATE)),
        sign=_pick(rng, [1, -1]),
    )


def mutate(g: Genotype, rng: np.random.Generator, sources: Sequence[str] = tuple(SOURCES)) -> Genotype:
    """Change one randomly chosen gene to another value.

    Args:
        g: parent.
        rng: numpy generator.
        sources: allowed input sources.

    Returns:
        The child (always different from ``g`` in its genes).
    """
    genes = g.genes()
    n_in, depth = STRUCTURES[g.structure]
    slots: list[list[Any]] = ([list(sources)] * n_in + [sorted(UNARY)] * (n_in * depth)
                              + [sorted(BINARY) if g.structure == "tree" else [None], sorted(REDUCE),
                                 sorted(AGGREGATE), [1, -1]])
    mutable = [i for i, opts in enumerate(slots) if len(opts) > 1]
    i = mutable[int(rng.integers(len(mutable)))]
    choices = [o for o in slots[i] if o != genes[i]]
    genes[i] = _pick(rng, choices)
    return Genotype.from_genes(g.structure, genes)


def crossover(a: Genotype, b: Genotype, rng: np.random.Generator, p: float = 0.5) -> Genotype:
    """Uniform crossover: each gene from ``b`` with probability ``p``, else from ``a``.

    Parents of different structures do not mix: the child is a copy of ``a``.

    Args:
        a: first parent.
        b: second parent.
        rng: numpy generator.
        p: per-gene probability of taking ``b``'s gene.

    Returns:
        The child.
    """
    if a.structure != b.structure:
        return a
    ga, gb = a.genes(), b.genes()
    take = rng.random(len(ga)) < p
    return Genotype.from_genes(a.structure, [y if t else x for x, y, t in zip(ga, gb, take)])
