"""The MQ benchmark file: (bit configuration, quantized top-1) pairs in one SQLite database.

Format ``mixq-mqbench``, schema version 1
=========================================

A benchmark is a single SQLite 3 file (readable with any SQLite client; never a pickle) with two
tables::

    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL            -- a JSON document
    );
    CREATE TABLE configs (
        idx          INTEGER PRIMARY KEY,  -- 0, 1, 2, ... in the order the entries were added
        bits         TEXT NOT NULL UNIQUE, -- weight bits in layer_names order, e.g. "8,3,2,4,...,8"
        top1         REAL NOT NULL,        -- quantized top-1 (%) on the test split
        avg_bits     REAL NOT NULL,        -- sum(params x bits) / sum(params)
        size_mb      REAL NOT NULL,        -- sum(params x bits) / 8 / 2^20 (weights only, no biases)
        seconds      REAL,                 -- wall time of the evaluation
        evaluated_at TEXT                  -- UTC ISO-8601 time stamp
    );

``meta`` keys (each value JSON-encoded):

============== =====================================================================================
format         ``"mixq-mqbench"`` (identifies the file)
schema_version ``1``
model          model name (registry name or ``package.module:function``)
layer_names    list of the quantized layers' qualified names, in model order (the order of ``bits``)
layer_params   list of the layers' weight parameter counts
checkpoint_sha256  hex sha256 of the checkpoint file the labels were measured with (or null)
checkpoint_file    that file's name (or null)
quantizer      dict describing the PTQ that produced the labels (weights, activations, BN, method)
data           ``{"dataset", "split", "n_test", "n_images"}``: the evaluation split
calibration    ``{"samples", "seed", "split"}``: the activation-range calibration draw
sampling       ``{"mode", "choices", "pinned_bits", "seed", "n"}``: how the configurations were drawn
versions       library versions at creation (:func:`mixq.provenance.versions`)
sessions       list of ``{"started", "versions"}``, one per build run (creation and each resume)
created        UTC ISO-8601 creation time
============== =====================================================================================

Only ``format``, ``schema_version``, ``model``, ``layer_names`` and ``layer_params`` are required to
open a file; the builder writes all of them. Readers must refuse a ``schema_version`` they do not
know. Each entry is committed in its own transaction, so a crash loses at most the entry in flight.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mixq.bits import MB, VALID_BITS, BitConfig
from mixq.errors import MixqError
from mixq.fileio import atomic_path

FORMAT = "mixq-mqbench"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE configs (
    idx          INTEGER PRIMARY KEY,
    bits         TEXT NOT NULL UNIQUE,
    top1         REAL NOT NULL,
    avg_bits     REAL NOT NULL,
    size_mb      REAL NOT NULL,
    seconds      REAL,
    evaluated_at TEXT
);
"""
_CONFIG_COLUMNS = ("idx", "bits", "top1", "avg_bits", "size_mb", "seconds", "evaluated_at")
_REQUIRED_META = ("model", "layer_names", "layer_params")


def utc_now() -> str:
    """Current UTC time as ISO-8601 with seconds precision.

    Returns:
        e.g. ``"2025-01-31T12:00:00+00:00"``.
    """
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def bits_to_text(bits: Sequence[int]) -> str:
    """The compact ``bits`` column form.

    Args:
        bits: one bit-width per layer.

    Returns:
        Comma-separated bits, e.g. ``"8,3,2,8"``.
    """
    return ",".join(str(int(b)) for b in bits)


@dataclass(frozen=True)
class Entry:
    """One labelled configuration.

    Attributes:
        idx: index in the benchmark (0-based, insertion order).
        bits: layer name -> weight bits, in model order.
        top1: quantized top-1 (%) on the test split.
        avg_bits: parameter-weighted average weight bits.
        size_mb: quantized weight size in MB.
        seconds: wall time of the evaluation (None when not recorded).
    """

    idx: int
    bits: dict[str, int]
    top1: float
    avg_bits: float
    size_mb: float
    seconds: float | None = None

    @property
    def bits_tuple(self) -> tuple[int, ...]:
        """Weight bits in layer order."""
        return tuple(self.bits.values())

    def config(self) -> BitConfig:
        """The configuration as a :class:`~mixq.bits.BitConfig`.

        Returns:
            The configuration.
        """
        return BitConfig(self.bits)

    def to_dict(self) -> dict[str, Any]:
        """The JSON Lines object of this entry.

        Returns:
            ``{"index", "bits", "top1", "avg_bits", "size_mb"}``.
        """
        return {"index": self.idx, "bits": dict(self.bits), "top1": self.top1,
                "avg_bits": self.avg_bits, "size_mb": self.size_mb}


class MQBench:
    """A benchmark file, open for reading and appending. Use :meth:`create` or :meth:`open`.

    Args:
        path: the file.
        conn: an open connection whose contents were validated.
        meta: the decoded ``meta`` table.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, meta: dict[str, Any]) -> None:
        self.path = path
        self._conn = conn
        self._meta = meta
        self.layer_names: list[str] = list(meta["layer_names"])
        self.layer_params: list[int] = [int(p) for p in meta["layer_params"]]
        self._total_params = sum(self.layer_params)

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, meta: Mapping[str, Any]) -> MQBench:
        """Create a new, empty benchmark file.

        The file is written under a temporary name unique to this process and then linked into place only
        if no file of that name appeared meanwhile, so a crash never leaves a half-created benchmark behind
        and two processes creating one file never share a temporary name or replace each other's file.

        Args:
            path: file to create (must not exist).
            meta: metadata (see the module docstring); needs at least ``model``, ``layer_names`` and
                ``layer_params``. ``format`` and ``schema_version`` are set here.

        Returns:
            The open benchmark.

        Raises:
            MixqError: when the file exists, the metadata is incomplete, or the file cannot be written.
        """
        path = Path(path)
        if path.exists():
            raise MixqError(f"benchmark file {str(path)!r} already exists; open it or pick another file")
        meta = dict(meta)
        meta["format"] = FORMAT
        meta["schema_version"] = SCHEMA_VERSION
        _check_meta(meta, str(path))
        try:
            encoded = {k: json.dumps(v, sort_keys=True) for k, v in meta.items()}
        except (TypeError, ValueError) as exc:
            raise MixqError(f"benchmark metadata for {str(path)!r} is not JSON-serialisable: {exc}") from None
        try:
            with atomic_path(path, replace=False) as tmp:  # a temporary name unique to this process
                conn = sqlite3.connect(tmp)
                try:
                    with conn:
                        conn.executescript(_SCHEMA)
                        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", sorted(encoded.items()))
                finally:
                    conn.close()
        except FileExistsError:
            raise MixqError(f"benchmark file {str(path)!r} was created meanwhile by another process; open it "
                            f"or pick another file") from None
        except (OSError, sqlite3.Error) as exc:
            raise MixqError(f"cannot create benchmark file {str(path)!r}: {exc}") from None
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike, expect_model: str | None = None, readonly: bool = False) -> MQBench:
        """Open and validate an existing benchmark file.

        Args:
            path: the file.
            expect_model: when given, the benchmark must be of this model.
            readonly: open read-only (no :meth:`add`).

        Returns:
            The open benchmark.

        Raises:
            MixqError: missing file, not SQLite / corrupt, an SQLite file that is not a mixq benchmark,
                an unsupported schema version, or a benchmark of another model.
        """
        path = Path(path)
        if not path.is_file():
            raise MixqError(f"benchmark file {str(path)!r} does not exist or is not a file")
        name = str(path)
        uri = path.resolve().as_uri() + ("?mode=ro" if readonly else "?mode=rw")
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=30.0)
        except sqlite3.Error as exc:
            raise MixqError(f"cannot open benchmark file {name!r}: {exc}") from None
        try:
            meta = _read_and_check(conn, name)
            if expect_model is not None and meta["model"] != expect_model:
                raise MixqError(
                    f"benchmark {name!r} is of model {meta['model']!r}, not {expect_model!r}"
                )
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, meta)

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> MQBench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata ----------------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the decoded ``meta`` table."""
        return json.loads(json.dumps(self._meta))

    @property
    def model(self) -> str:
        """The model the benchmark was built for."""
        return str(self._meta["model"])

    def set_meta(self, key: str, value: Any) -> None:
        """Set one metadata key (committed at once).

        Args:
            key: meta key (``format`` and ``schema_version`` are fixed).
            value: JSON-serialisable value.
        """
        if key in ("format", "schema_version", "layer_names", "layer_params"):
            raise MixqError(f"benchmark meta key {key!r} cannot be changed")
        text = json.dumps(value, sort_keys=True)
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, text))
        self._meta[key] = json.loads(text)

    # -- entries -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._execute("SELECT COUNT(*) FROM configs").fetchone()[0])

    def __contains__(self, bits: object) -> bool:
        if not isinstance(bits, (tuple, list)):
            return False
        row = self._execute("SELECT 1 FROM configs WHERE bits = ?", (bits_to_text(bits),)).fetchone()
        return row is not None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            raise MixqError(f"benchmark {str(self.path)!r} cannot be read (corrupt?): {exc}") from None

    def _entry(self, row: Sequence[Any]) -> Entry:
        idx, text, top1, avg_bits, size_mb, seconds = row
        try:
            bits = [int(b) for b in str(text).split(",")]
        except ValueError:
            bits = []
        if len(bits) != len(self.layer_names):
            raise MixqError(
                f"benchmark {str(self.path)!r} is corrupt: entry {idx} has bits {text!r}, expected "
                f"{len(self.layer_names)} comma-separated integers"
            )
        try:
            values = {"top1": float(top1), "avg_bits": float(avg_bits), "size_mb": float(size_mb)}
        except (TypeError, ValueError):
            values = {}
        ok = (len(values) == 3 and 0.0 <= values["top1"] <= 100.0 and all(math.isfinite(v) for v in values.values())
              and min(VALID_BITS) <= values["avg_bits"] <= max(VALID_BITS) and values["size_mb"] >= 0.0)
        if not ok:
            raise MixqError(
                f"benchmark {str(self.path)!r} is corrupt: entry {idx} has top-1 {top1!r}, average bits {avg_bits!r} "
                f"and size {size_mb!r} MB; expected a top-1 in [0, 100] %, average bits in "
                f"[{min(VALID_BITS)}, {max(VALID_BITS)}] and a finite size"
            )
        return Entry(
            idx=int(idx), bits=dict(zip(self.layer_names, bits, strict=True)), top1=values["top1"],
            avg_bits=values["avg_bits"], size_mb=values["size_mb"], seconds=None if seconds is None else float(seconds),
        )

    _SELECT = "SELECT idx, bits, top1, avg_bits, size_mb, seconds FROM configs"

    def get(self, idx: int) -> Entry:
        """The entry at an index.

        Args:
            idx: 0-based index.

        Returns:
            The entry.

        Raises:
            MixqError: when no entry has that index.
        """
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
            raise MixqError(f"benchmark index must be an integer, got {idx!r}")
        row = self._execute(self._SELECT + " WHERE idx = ?", (int(idx),)).fetchone()
        if row is None:
            raise MixqError(f"benchmark {str(self.path)!r} has no entry {idx} (it holds {len(self)} entries, "
                            f"indices 0..{len(self) - 1})")
        return self._entry(row)

    def entries(self) -> list[Entry]:
        """All entries, by index.

        Returns:
            The entries.
        """
        return [self._entry(r) for r in self._execute(self._SELECT + " ORDER BY idx").fetchall()]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())

    def _bits_of(self, config: BitConfig | Mapping[str, Any] | Sequence[int]) -> tuple[int, ...]:
        """Validate a configuration against this benchmark's layers; return its bits in layer order."""
        where = f"benchmark {str(self.path)!r} (model {self.model!r}, {len(self.layer_names)} layers)"
        if isinstance(config, (tuple, list)):
            if len(config) != len(self.layer_names):
                raise MixqError(f"configuration has {len(config)} bit-widths; {where} needs one per layer")
            config = dict(zip(self.layer_names, config, strict=True))
        if isinstance(config, Mapping):
            config = BitConfig.from_dict(dict(config), source="queried configuration")
        if not isinstance(config, BitConfig):
            raise MixqError(f"a configuration must be a BitConfig, a mapping or a list of bits, got "
                            f"{type(config).__name__}")
        known = set(self.layer_names)
        unknown = [n for n in config.weights if n not in known]
        if unknown:
            raise MixqError(
                f"configuration is for another model: layer(s) {unknown[:5]} are not in {where}; its layers "
                f"are {self.layer_names[:5]}{' ...' if len(self.layer_names) > 5 else ''}"
            )
        missing = [n for n in self.layer_names if n not in config.weights]
        if missing:
            raise MixqError(f"configuration lacks layer(s) {missing[:5]} ({len(missing)} missing) of {where}")
        quantizer = self._meta.get("quantizer")
        act_bits = int(quantizer.get("act_bits", 8)) if isinstance(quantizer, dict) else 8
        odd = {n: b for n, b in config.acts.items() if b != act_bits}
        if odd:
            raise MixqError(f"configuration sets activation bits {dict(list(odd.items())[:3])}; {where} has "
                            f"{act_bits}-bit activations everywhere")
        return config.bits_tuple(self.layer_names)

    def index_of(self, config: BitConfig | Mapping[str, Any] | Sequence[int]) -> int | None:
        """Index of a configuration, or None when it is not in the benchmark.

        Args:
            config: a :class:`BitConfig`, a ``name -> bits`` mapping, or bits in layer order.

        Returns:
            The index, or None.

        Raises:
            MixqError: when the configuration does not fit this benchmark's model.
        """
        bits = self._bits_of(config)
        row = self._execute("SELECT idx FROM configs WHERE bits = ?", (bits_to_text(bits),)).fetchone()
        return None if row is None else int(row[0])

    def query(self, config: BitConfig | Mapping[str, Any] | Sequence[int]) -> Entry:
        """The entry of a configuration.

        Args:
            config: a :class:`BitConfig`, a ``name -> bits`` mapping, or bits in layer order.

        Returns:
            The entry.

        Raises:
            MixqError: when the configuration does not fit this benchmark's model or is not in it.
        """
        bits = self._bits_of(config)
        row = self._execute(self._SELECT + " WHERE bits = ?", (bits_to_text(bits),)).fetchone()
        if row is None:
            raise MixqError(f"configuration {bits_to_text(bits)} is not in benchmark {str(self.path)!r} "
                            f"({len(self)} entries)")
        return self._entry(row)

    def sample(self, n: int, seed: int = 0) -> list[Entry]:
        """``n`` distinct random entries.

        Args:
            n: how many.
            seed: generator seed (numpy ``default_rng``); same seed and contents, same entries.

        Returns:
            The entries, in draw order.

        Raises:
            MixqError: when ``n`` exceeds the number of entries.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise MixqError(f"sample size must be a non-negative integer, got {n!r}")
        _check_seed(seed)
        entries = self.entries()
        if n > len(entries):
            raise MixqError(f"cannot sample {n} entries: benchmark {str(self.path)!r} holds {len(entries)}")
        picks = np.random.default_rng(seed).choice(len(entries), size=n, replace=False)
        return [entries[int(i)] for i in picks]

    def split(self, train_fraction: float, seed: int = 0) -> tuple[list[Entry], list[Entry]]:
        """A seeded train / held-out split of the entries (e.g. to fit a proxy and test it).

        Args:
            train_fraction: share of entries in the train part, in (0, 1); ``round(f * len)`` entries.
            seed: generator seed of the permutation.

        Returns:
            ``(train, heldout)``, each sorted by index, disjoint, together all entries.

        Raises:
            MixqError: for a fraction outside (0, 1) or an empty benchmark.
        """
        if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)) or not (
            0 < train_fraction < 1
        ):
            raise MixqError(f"train fraction must be a number strictly between 0 and 1, got {train_fraction!r}")
        _check_seed(seed)
        entries = self.entries()
        if not entries:
            raise MixqError(f"benchmark {str(self.path)!r} is empty: nothing to split")
        perm = np.random.default_rng(seed).permutation(len(entries))
        n_train = int(round(train_fraction * len(entries)))
        train = sorted(int(i) for i in perm[:n_train])
        held = sorted(int(i) for i in perm[n_train:])
        return [entries[i] for i in train], [entries[i] for i in held]

    def to_jsonl(self, path: str | os.PathLike) -> int:
        """Export to JSON Lines: one ``{"index", "bits": {name: bits}, "top1", "avg_bits", "size_mb"}``
        object per line, by index.

        Args:
            path: output file (overwritten).

        Returns:
            Number of lines written.
        """
        entries = self.entries()
        try:
            with open(path, "w", encoding="utf-8") as fh:
                for e in entries:
                    fh.write(json.dumps(e.to_dict()) + "\n")
        except OSError as exc:
            raise MixqError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
        return len(entries)

    def summary(self) -> dict[str, Any]:
        """Counts and ranges, for ``mixq bench info``.

        Returns:
            ``{"entries", "top1_min", "top1_max", "top1_mean", "avg_bits_min", "avg_bits_max",
            "seconds_total"}`` (None values when empty).
        """
        row = self._execute(
            "SELECT COUNT(*), MIN(top1), MAX(top1), AVG(top1), MIN(avg_bits), MAX(avg_bits), SUM(seconds) "
            "FROM configs"
        ).fetchone()
        keys = ("entries", "top1_min", "top1_max", "top1_mean", "avg_bits_min", "avg_bits_max", "seconds_total")
        return dict(zip(keys, row, strict=True))

    # -- writing -----------------------------------------------------------------------------------
    def pending(self, configs: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
        """The configurations not stored yet, in the given order.

        Args:
            configs: bit tuples in layer order.

        Returns:
            Those absent from the benchmark.
        """
        stored = {r[0] for r in self._execute("SELECT bits FROM configs").fetchall()}
        return [tuple(int(b) for b in c) for c in configs if bits_to_text(c) not in stored]

    def add(
        self,
        bits: Sequence[int],
        top1: float,
        avg_bits: float | None = None,
        size_mb: float | None = None,
        seconds: float | None = None,
    ) -> int:
        """Store one labelled configuration, committed at once (its own transaction).

        Args:
            bits: weight bits in layer order.
            top1: quantized top-1 in percent.
            avg_bits: average bits (default: computed from ``layer_params``).
            size_mb: size in MB (default: computed from ``layer_params``).
            seconds: evaluation wall time.

        Returns:
            The new entry's index.

        Raises:
            MixqError: bad bits, a top-1 outside [0, 100], or a configuration already stored.
        """
        bits = tuple(bits)
        if len(bits) != len(self.layer_names):
            raise MixqError(f"expected {len(self.layer_names)} bit-widths for benchmark {str(self.path)!r}, "
                            f"got {len(bits)}")
        for name, b in zip(self.layer_names, bits, strict=True):
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or int(b) not in VALID_BITS:
                raise MixqError(f"bits of layer {name!r} must be an integer in 2..8 or 32, got {b!r}")
        top1 = float(top1)
        if not (math.isfinite(top1) and 0.0 <= top1 <= 100.0):
            raise MixqError(f"top-1 must be a percentage in [0, 100], got {top1}")
        bit_params = sum(p * int(b) for p, b in zip(self.layer_params, bits, strict=True))
        avg = bit_params / self._total_params if avg_bits is None else float(avg_bits)
        size = bit_params / MB if size_mb is None else float(size_mb)
        text = bits_to_text(bits)
        try:
            with self._conn:
                cur = self._conn.execute(
                    "INSERT INTO configs(idx, bits, top1, avg_bits, size_mb, seconds, evaluated_at) "
                    "VALUES ((SELECT COALESCE(MAX(idx), -1) + 1 FROM configs), ?, ?, ?, ?, ?, ?)",
                    (text, top1, avg, size, None if seconds is None else float(seconds), utc_now()),
                )
                idx = self._conn.execute("SELECT idx FROM configs WHERE rowid = ?", (cur.lastrowid,)).fetchone()[0]
        except sqlite3.IntegrityError:
            raise MixqError(f"configuration {text} is already in benchmark {str(self.path)!r}") from None
        except sqlite3.DatabaseError as exc:
            raise MixqError(f"cannot write to benchmark {str(self.path)!r}: {exc}") from None
        return int(idx)

    def __repr__(self) -> str:
        return f"MQBench({str(self.path)!r}, model={self.model!r}, entries={len(self)})"


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MixqError(f"seed must be a non-negative integer, got {seed!r}")


def _check_meta(meta: Mapping[str, Any], name: str) -> None:
    """Check the required meta keys and their types."""
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise MixqError(f"benchmark {name!r} lacks meta key(s) {missing}")
    if not isinstance(meta["model"], str) or not meta["model"]:
        raise MixqError(f"benchmark {name!r}: meta 'model' must be a non-empty string")
    names, params = meta["layer_names"], meta["layer_params"]
    if (not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)):
        raise MixqError(f"benchmark {name!r}: meta 'layer_names' must be a non-empty list of unique strings")
    if (not isinstance(params, list) or len(params) != len(names)
            or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in params)):
        raise MixqError(f"benchmark {name!r}: meta 'layer_params' must list one positive integer per layer")


def _read_and_check(conn: sqlite3.Connection, name: str) -> dict[str, Any]:
    """Validate an open database as a mixq benchmark; return its decoded meta."""
    not_bench = f"{name!r} is not a mixq benchmark"
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise MixqError(f"{not_bench} (corrupt or not SQLite: {exc})") from None
    if "meta" not in tables or "configs" not in tables:
        raise MixqError(f"{not_bench}: it is an SQLite database without the 'meta' and 'configs' tables "
                        f"(tables: {sorted(tables)[:8]})")
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
        columns = [r[1] for r in conn.execute("PRAGMA table_info(configs)")]
    except sqlite3.DatabaseError as exc:
        raise MixqError(f"{not_bench} (corrupt or foreign 'meta' table: {exc})") from None
    meta: dict[str, Any] = {}
    for key, value in rows:
        try:
            meta[str(key)] = json.loads(value)
        except (TypeError, ValueError):
            raise MixqError(f"{not_bench} (corrupt): meta key {key!r} does not hold JSON") from None
    if meta.get("format") != FORMAT:
        raise MixqError(f"{not_bench}: meta 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise MixqError(
            f"benchmark {name!r} has schema version {version!r}; this mixq reads version(s) "
            f"{list(SUPPORTED_SCHEMA_VERSIONS)} (a newer file needs a newer mixq)"
        )
    if tuple(columns) != _CONFIG_COLUMNS:
        raise MixqError(f"{not_bench} (corrupt): table 'configs' has columns {columns}, expected "
                        f"{list(_CONFIG_COLUMNS)}")
    _check_meta(meta, name)
    return meta
