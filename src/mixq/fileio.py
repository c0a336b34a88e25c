"""Files that runs write, resume from and share: atomic writes, locks and resume signatures.

* :func:`atomic_write_text`, :func:`atomic_write_json` and :func:`atomic_path` write to a temporary
  file in the target's folder, unique to the writer (``tempfile``), and rename it into place, so a
  killed run never leaves half a file and two processes never share a temporary name.
* :func:`locked` holds an exclusive lock (the ``filelock`` package; the kernel releases it when a
  process dies, even by ``kill -9``) on an output folder (lock file ``FOLDER/.mixq.lock``) or a
  file (``.FILE.mixq.lock`` beside it). Locks are re-entrant inside one process, so a command may lock its
  output folder before loading and the library call it makes may lock it again.
* :func:`check_signature` compares the settings a saved state was made with against the ones asked for
  now and refuses a mismatch with one message naming each differing setting, old and new value.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from mixq.errors import MixqError

FOLDER_LOCK = ".mixq.lock"

_locks: dict[str, FileLock] = {}
_locks_guard = threading.Lock()


@contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """A unique temporary path beside ``path`` that becomes ``path`` when the block ends without error.

    For writers that need a file name (``torch.save``, SQLite, ``numpy.savez``); the temporary file is
    removed when the block raises.

    Args:
        path: the final file.
        replace: replace an existing file (a rename); False publishes the file only if ``path`` does not exist
            (a hard link, so a file another process created meanwhile is never replaced).

    Returns:
        A context manager yielding the temporary path (an existing, empty file).

    Raises:
        FileExistsError: ``replace`` is False and ``path`` exists when the block ends.
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _new_file_mode())  # mkstemp makes 0600; a result file gets the usual permissions
    finally:
        os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if replace:
            os.replace(tmp, target)
        else:
            _publish_new(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _new_file_mode() -> int:
    """The permissions ``open(path, "w")`` would give a new file (0666 less the umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _publish_new(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the name ``target`` unless that exists (FileExistsError)."""
    try:
        os.link(tmp, target)  # atomic and never replaces
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename
        if target.exists():
            raise FileExistsError(str(target)) from None
        os.replace(tmp, target)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    """Write a text file atomically (a unique temporary file in the same folder, then a rename).

    Args:
        path: the file.
        text: its content (UTF-8).
        durable: flush the content to disk before the rename (``fsync``), so that it survives a power cut
            too; a killed process loses nothing either way. Checkpoints written every few milliseconds
            skip it.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """Write a JSON file atomically.

    Args:
        path: the file.
        obj: a JSON-serialisable object.
        indent: ``json.dumps`` indent (None: one line).
    """
    atomic_write_text(path, json.dumps(obj, indent=indent) + ("\n" if indent is not None else ""))


def lock_file_of(path: str | os.PathLike) -> Path:
    """The lock file that guards a folder (``FOLDER/.mixq.lock``) or a file (``.FILE.mixq.lock`` beside it).

    Args:
        path: an existing folder, or a file (which need not exist yet).

    Returns:
        The lock file's path.
    """
    p = Path(path)
    return p / FOLDER_LOCK if p.is_dir() else p.with_name(f".{p.name}{FOLDER_LOCK}")


@contextmanager
def locked(path: str | os.PathLike, what: str = "output folder", timeout: float = 0.0,
           hint: str = "wait for it to finish or choose another --out") -> Iterator[Path]:
    """Hold the exclusive lock of a folder or file for the block.

    Args:
        path: the folder (must exist) or file.
        what: how to name it in the message.
        timeout: seconds to wait for another holder to release it (0: fail at once).
        hint: what the user can do, appended to the message.

    Returns:
        A context manager yielding the lock file's path.

    Raises:
        MixqError: when another process (or thread) holds the lock for longer than ``timeout``, or the folder
            the lock file belongs in does not exist.
    """
    lock_path = lock_file_of(path)
    if not lock_path.parent.is_dir():
        raise MixqError(f"cannot lock {what} {str(path)!r}: the folder {str(lock_path.parent)!r} does not exist")
    key = str(lock_path.resolve())
    with _locks_guard:
        lock = _locks.setdefault(key, FileLock(key))  # one object per file: re-entrant in this process
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        waited = f" for {timeout:g} s" if timeout > 0 else ""
        raise MixqError(f"{what} {str(path)!r} is in use by another mixq run (it holds {str(lock_path)!r}"
                        f"{waited}); {hint}") from None
    try:
        yield lock_path
    finally:
        lock.release()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


_MISSING = object()


def _show(value: Any) -> str:
    """A setting's value for a message; a digest is cut to its first 12 hex digits."""
    if value is _MISSING:
        return "(not recorded)"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return repr(value[:12] + "...")
    return repr(value)


def signature_diffs(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The settings in which two signatures differ, as ``"name: old -> new"`` lines.

    Nested settings are named by their path (``"budget.avg_bits"``); values are compared in their JSON
    form, so tuples equal lists.

    Args:
        saved: the signature a saved state was made with.
        wanted: the signature of the run asked for now.

    Returns:
        One line per differing setting, in the order of ``wanted`` then keys only ``saved`` has.
    """
    old = _flatten(json.loads(json.dumps(saved)))
    new = _flatten(json.loads(json.dumps(wanted)))
    keys = list(new) + [k for k in old if k not in new]
    return [f"{k}: {_show(old.get(k, _MISSING))} -> {_show(new.get(k, _MISSING))}"
            for k in keys if old.get(k, _MISSING) != new.get(k, _MISSING)]


def check_signature(saved: Mapping[str, Any], wanted: Mapping[str, Any], what: str, hint: str) -> None:
    """Refuse to resume a state made with other settings.

    Args:
        saved: the signature stored with the state.
        wanted: the signature of this run.
        what: the state, for the message (e.g. ``"search checkpoint 'runs/a/search_state.json'"``).
        hint: what the user can do (e.g. ``"rerun with --overwrite to discard it"``).

    Raises:
        MixqError: naming every differing setting with its old and new value.
    """
    diffs = signature_diffs(saved, wanted)
    if diffs:
        raise MixqError(f"{what} was made with other settings ({'; '.join(diffs)}); {hint}")


def remove_files(folder: str | os.PathLike, names: list[str]) -> list[str]:
    """Delete the named files of a folder that exist (what ``--overwrite`` discards).

    Args:
        folder: the folder.
        names: file names inside it.

    Returns:
        The names that were removed.
    """
    removed = []
    for name in names:
        p = Path(folder) / name
        if p.is_file():
            p.unlink()
            removed.append(name)
    return removed
