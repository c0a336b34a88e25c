"""Bit configurations and budgets: the one currency every search, benchmark and report exchanges.

A :class:`BitConfig` maps a layer's qualified module name (``"layer1.0.conv1"``) to its weight
bit-width. Its JSON file is that mapping itself::

    {"conv1": 8, "layer1.0.conv1": 3, ..., "linear": 8}

A layer may instead map to ``{"weight": 3, "act": 8}`` when an activation bit-width is set per layer
(room for activation search; the default activation bit-width applies to layers without one).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from mixq.errors import MixqError
from mixq.fileio import atomic_write_json

FLOAT_BITS = 32  # a bit-width of 32 means "leave in float"
MIN_BITS = 2
MAX_BITS = 8
MB = 8 * 2**20  # bits per MiB: size_mb = sum(params x bits) / MB
VALID_BITS = tuple(range(MIN_BITS, MAX_BITS + 1)) + (FLOAT_BITS,)


def _check_bits(name: str, bits: object, what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        # JSON floats such as 4.0 are accepted when integral
        if isinstance(bits, float) and bits.is_integer():
            bits = int(bits)
        else:
            raise MixqError(f"{what} bits of layer {name!r} must be an integer, got {bits!r}")
    if bits not in VALID_BITS:
        raise MixqError(
            f"{what} bits of layer {name!r} is {bits}; expected {MIN_BITS}..{MAX_BITS} or {FLOAT_BITS} (float)"
        )
    return bits


@dataclass(frozen=True)
class BitConfig:
    """Per-layer bit-widths keyed by qualified module name.

    Attributes:
        weights: layer name -> weight bits (2..8, or 32 for float). Order is the model's layer order.
        acts: layer name -> activation (input) bits for layers that override the model default.
    """

    weights: Mapping[str, int]
    acts: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w = {str(k): _check_bits(k, v, "weight") for k, v in dict(self.weights).items()}
        a = {str(k): _check_bits(k, v, "activation") for k, v in dict(self.acts).items()}
        extra = sorted(set(a) - set(w))
        if extra:
            raise MixqError(f"activation bits given for layers without weight bits: {extra[:5]}")
        object.__setattr__(self, "weights", MappingProxyType(w))
        object.__setattr__(self, "acts", MappingProxyType(a))

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def uniform(cls, layers: Iterable[str], bits: int) -> BitConfig:
        """The same weight bit-width for every layer.

        Args:
            layers: layer names, in model order.
            bits: bit-width for all of them.

        Returns:
            The configuration.
        """
        return cls({name: bits for name in layers})

    @classmethod
    def from_dict(cls, data: object, source: str = "bit configuration") -> BitConfig:
        """Parse the JSON mapping form (see the module docstring).

        Args:
            data: parsed JSON.
            source: what to call the input in error messages (e.g. the file name).

        Returns:
            The configuration.
        """
        if not isinstance(data, dict) or not data:
            raise MixqError(f"{source}: expected a JSON object mapping layer names to bits")
        weights: dict[str, int] = {}
        acts: dict[str, int] = {}
        for name, value in data.items():
            if isinstance(value, dict):
                unknown = set(value) - {"weight", "act"}
                if unknown or "weight" not in value:
                    raise MixqError(
                        f"{source}: layer {name!r} must map to bits or to {{'weight': b, 'act': b}}, "
                        f"got {value!r}"
                    )
                weights[name] = value["weight"]
                if "act" in value:
                    acts[name] = value["act"]
            else:
                weights[name] = value  # type: ignore[assignment]
        return cls(weights, acts)

    def to_dict(self) -> dict[str, object]:
        """The JSON mapping form (plain ``name -> bits`` unless activation bits are set).

        Returns:
            A JSON-serialisable dict.
        """
        out: dict[str, object] = {}
        for name, bits in self.weights.items():
            out[name] = {"weight": bits, "act": self.acts[name]} if name in self.acts else bits
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> BitConfig:
        """Read a configuration file.

        Args:
            path: JSON file.

        Returns:
            The configuration.
        """
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise MixqError(f"cannot read bit configuration {str(p)!r}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MixqError(f"bit configuration {str(p)!r} is not valid JSON: {exc}") from None
        return cls.from_dict(data, source=f"bit configuration {str(p)!r}")

    def save(self, path: str | os.PathLike) -> None:
        """Write the configuration as indented JSON, atomically (a temporary file, then a rename).

        Args:
            path: output file.
        """
        atomic_write_json(path, self.to_dict(), indent=2)

    # -- checks and views -------------------------------------------------------------------------
    def validate(self, layers: Iterable[str]) -> None:
        """Check that the configuration names exactly the given layers.

        Args:
            layers: the model's quantizable layer names.

        Raises:
            MixqError: naming unknown and missing layers.
        """
        layers = list(layers)
        unknown = [n for n in self.weights if n not in set(layers)]
        missing = [n for n in layers if n not in self.weights]
        if unknown:
            raise MixqError(
                f"bit configuration names unknown layer(s) {unknown[:5]}; the model's layers are "
                f"{layers[:5]}{' ...' if len(layers) > 5 else ''}"
            )
        if missing:
            raise MixqError(f"bit configuration lacks layer(s) {missing[:5]} ({len(missing)} missing)")

    def bits_tuple(self, layers: Iterable[str]) -> tuple[int, ...]:
        """Weight bits in the given layer order (a hashable genome).

        Args:
            layers: layer names.

        Returns:
            Tuple of bits.
        """
        return tuple(self.weights[n] for n in layers)

    def __hash__(self) -> int:
        return hash((tuple(self.weights.items()), tuple(self.acts.items())))


@dataclass(frozen=True)
class Budget:
    """A cost budget: parameter-weighted average weight bits, weight size in MB and/or BitOps.

    Attributes:
        avg_bits: maximum parameter-weighted average weight bit-width (EvoQ eq. 1), or None.
        size_mb: maximum weight size, sum(params x bits) / 8 / 2^20, or None.
        bitops: maximum BitOps per sample, sum over layers of MACs x weight bits x activation bits, or None
            (measured by :class:`mixq.quant.cost.CostModel`).
    """

    avg_bits: float | None = None
    size_mb: float | None = None
    bitops: float | None = None

    def __post_init__(self) -> None:
        if self.avg_bits is None and self.size_mb is None and self.bitops is None:
            raise MixqError("a budget needs an average bit-width, a size in MB or a BitOps count")
        for name, value in (("average bits", self.avg_bits), ("size in MB", self.size_mb),
                            ("BitOps", self.bitops)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise MixqError(f"budget {name} must be a positive number, got {value}")
        if self.avg_bits is not None and self.avg_bits > MAX_BITS:
            raise MixqError(f"budget of {self.avg_bits} average bits is above the maximum of {MAX_BITS} bits per "
                            f"quantized weight: every layer at {MAX_BITS} bits already fits, so there is nothing to "
                            f"choose; give {MAX_BITS} or less (or keep the model in float)")

    def max_bit_params(self, total_params: int) -> float:
        """The size limits as a bound on sum(params x bits).

        Args:
            total_params: number of quantized weight parameters.

        Returns:
            The tightest bound implied by the average-bits and MB limits (``inf`` when only BitOps is set).
        """
        bounds = []
        if self.avg_bits is not None:
            bounds.append(self.avg_bits * total_params)
        if self.size_mb is not None:
            bounds.append(self.size_mb * 8 * 2**20)
        return min(bounds) if bounds else math.inf

    @property
    def max_bitops(self) -> float:
        """The BitOps limit (``inf`` when none is set)."""
        return math.inf if self.bitops is None else float(self.bitops)

    def text(self) -> str:
        """The budget in words, e.g. ``"avg bits <= 3.0 and BitOps <= 1.2e+09"``."""
        parts = []
        if self.avg_bits is not None:
            parts.append(f"avg bits <= {self.avg_bits}")
        if self.size_mb is not None:
            parts.append(f"size <= {self.size_mb} MB")
        if self.bitops is not None:
            parts.append(f"BitOps <= {self.bitops:.4g}")
        return " and ".join(parts)

    def to_dict(self) -> dict[str, float | None]:
        """JSON form: ``{"avg_bits", "size_mb"}`` plus ``"bitops"`` when set (older signatures stay valid)."""
        d: dict[str, float | None] = {"avg_bits": self.avg_bits, "size_mb": self.size_mb}
        if self.bitops is not None:
            d["bitops"] = self.bitops
        return d
