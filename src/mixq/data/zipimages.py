"""Decode images straight out of stored (uncompressed) zip archives, with an in-memory cache.

Nothing is extracted to disk. The archive's member table is parsed once per file (keyed by path, size
and modification time) and each requested member is read by seeking to its offset, so decoding 50
members of a 50,000-member archive touches only those 50 members. Decoded arrays are cached per
``(zip file, member tuple, crop)``: asking for the same members again costs nothing.

Cached arrays are read-only; callers that hand data to users should copy them (``datasets`` does).
"""

from __future__ import annotations

import io
import struct
import threading
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mixq.errors import MixqError

__all__ = [
    "IMAGE_SUFFIXES",
    "cache_info",
    "clear_cache",
    "decode_members",
    "list_members",
]

#: Member name endings (lower-cased) treated as images.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header, 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"

# (resolved path, size, mtime_ns) -> {member name: ZipInfo}
_INDEX: dict[tuple[str, int, int], dict[str, zipfile.ZipInfo]] = {}
# (index key, prefix, suffixes) -> sorted member names
_LISTS: dict[tuple, tuple[str, ...]] = {}
# (index key, member tuple, crop) -> read-only uint8 array (N, H, W, 3)
_CACHE: dict[tuple, np.ndarray] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class CacheInfo:
    """Counters of the decode cache (for tests and diagnostics)."""

    entries: int  # cached decoded arrays
    nbytes: int  # bytes held by them
    hits: int  # requests answered from the cache
    misses: int  # requests that decoded
    decoded: int  # images decoded since the last clear_cache()


_STATS = {"hits": 0, "misses": 0, "decoded": 0}


def clear_cache() -> None:
    """Drop every cached member table and decoded array, and reset the counters."""
    with _LOCK:
        _INDEX.clear()
        _LISTS.clear()
        _CACHE.clear()
        for key in _STATS:
            _STATS[key] = 0


def cache_info() -> CacheInfo:
    """Return the current cache counters.

    Returns:
        A :class:`CacheInfo` snapshot.
    """
    with _LOCK:
        return CacheInfo(
            entries=len(_CACHE),
            nbytes=sum(a.nbytes for a in _CACHE.values()),
            hits=_STATS["hits"],
            misses=_STATS["misses"],
            decoded=_STATS["decoded"],
        )


def _index_key(zip_path: Path) -> tuple[str, int, int]:
    path = Path(zip_path)
    if not path.is_file():
        raise MixqError(f"image archive {str(path)!r} does not exist (expected a .zip file)")
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _member_index(zip_path: Path) -> tuple[tuple[str, int, int], dict[str, zipfile.ZipInfo]]:
    key = _index_key(zip_path)
    with _LOCK:
        index = _INDEX.get(key)
    if index is None:
        try:
            with zipfile.ZipFile(key[0]) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise MixqError(f"image archive {str(zip_path)!r} is not a readable zip file ({exc})") from exc
        index = {info.filename: info for info in infos if not info.is_dir()}
        with _LOCK:
            _INDEX[key] = index
    return key, index


def list_members(
    zip_path: str | Path, prefix: str = "", suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> list[str]:
    """List the image members of an archive, sorted by name.

    Args:
        zip_path: the ``.zip`` file.
        prefix: keep only members whose name starts with this (e.g. ``"test/"``).
        suffixes: keep only members whose lower-cased name ends with one of these.

    Returns:
        Member names in sorted (deterministic) order.

    Raises:
        MixqError: when the file is missing or is not a zip archive.
    """
    key, index = _member_index(Path(zip_path))
    ends = tuple(s.lower() for s in suffixes)
    list_key = (key, prefix, ends)
    with _LOCK:
        names = _LISTS.get(list_key)
    if names is None:
        names = tuple(sorted(n for n in index if n.startswith(prefix) and n.lower().endswith(ends)))
        with _LOCK:
            _LISTS[list_key] = names
    return list(names)


def _read_member(fh: io.BufferedReader, info: zipfile.ZipInfo, zip_path: Path) -> bytes:
    """Read one member's bytes by offset (stored members) and check its CRC."""
    fh.seek(info.header_offset)
    header = fh.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
        raise MixqError(f"image archive {str(zip_path)!r} is corrupt: bad local header for {info.filename!r}")
    fields = _LOCAL_HEADER.unpack(header)
    name_len, extra_len = fields[-2], fields[-1]
    fh.seek(name_len + extra_len, io.SEEK_CUR)
    data = fh.read(info.compress_size)
    if len(data) != info.compress_size or zlib.crc32(data) != info.CRC:
        raise MixqError(f"image archive {str(zip_path)!r} is corrupt: member {info.filename!r} fails its CRC")
    return data


def _decode_one(data: bytes, crop: int | None) -> np.ndarray:
    """Decode JPEG/PNG bytes to an RGB uint8 array (H, W, 3), center-cropped to ``crop`` if given."""
    with Image.open(io.BytesIO(data)) as im:
        if crop is not None:
            w, h = im.size
            if w < crop or h < crop:
                raise ValueError(f"image is {w}x{h}, smaller than the {crop}x{crop} center crop")
            left, top = (w - crop) // 2, (h - crop) // 2
            im = im.crop((left, top, left + crop, top + crop))
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im, dtype=np.uint8)


def decode_members(zip_path: str | Path, members: Sequence[str], crop: int | None = None) -> np.ndarray:
    """Decode the given members of a zip archive into one array, using the in-memory cache.

    Only the listed members are read. Stored members are read by offset; compressed ones (not used by
    the project's archives, but accepted) go through :mod:`zipfile`.

    Args:
        zip_path: the ``.zip`` file.
        members: member names, in the order wanted in the result.
        crop: side of a center square crop, or ``None`` to keep the images whole (then all images must
            have the same size).

    Returns:
        Read-only uint8 array ``(N, H, W, 3)``, RGB, in the order of ``members``. Do not modify it: it
        is shared with the cache (copy it first).

    Raises:
        MixqError: missing/corrupt archive, unknown member, undecodable image or mixed image sizes.
    """
    path = Path(zip_path)
    key, index = _member_index(path)
    names = tuple(members)
    cache_key = (key, names, crop)
    with _LOCK:
        cached = _CACHE.get(cache_key)
        if cached is not None:
            _STATS["hits"] += 1
            return cached
    missing = [n for n in names if n not in index]
    if missing:
        raise MixqError(
            f"image archive {str(path)!r} has no member {missing[0]!r} "
            f"({len(missing)} requested members missing)"
        )

    out: np.ndarray | None = None  # (N, H, W, 3) uint8
    zf: zipfile.ZipFile | None = None
    try:
        with open(key[0], "rb") as fh:
            for i, name in enumerate(names):
                info = index[name]
                if info.compress_type == zipfile.ZIP_STORED:
                    data = _read_member(fh, info, path)
                else:
                    if zf is None:
                        zf = zipfile.ZipFile(key[0])
                    data = zf.read(info)
                try:
                    img = _decode_one(data, crop)
                except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                    raise MixqError(
                        f"image archive {str(path)!r}: member {name!r} is not a decodable image ({exc})"
                    ) from exc
                if out is None:
                    out = np.empty((len(names), *img.shape), dtype=np.uint8)
                elif img.shape != out.shape[1:]:
                    raise MixqError(
                        f"image archive {str(path)!r}: member {name!r} is {img.shape[1]}x{img.shape[0]}, "
                        f"expected {out.shape[2]}x{out.shape[1]} like the others (pass a crop size)"
                    )
                out[i] = img
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise MixqError(f"image archive {str(path)!r} could not be read ({exc})") from exc
    finally:
        if zf is not None:
            zf.close()
    if out is None:  # no members asked for
        side = crop or 0
        out = np.empty((0, side, side, 3), dtype=np.uint8)
    out.flags.writeable = False
    with _LOCK:
        _STATS["misses"] += 1
        _STATS["decoded"] += len(names)
        _CACHE[cache_key] = out
    return out
