"""Where data and checkpoints live: command-line flag, then environment variable, then ``../shared``.

``../shared`` is looked up beside the current working directory and beside the source checkout, so a
developer checkout and CI (which has ``shared/`` next to the clone) work with no set-up.
"""

from __future__ import annotations

import os
from pathlib import Path

from mixq.errors import MixqError

DEMO_DIR = Path(__file__).resolve().parent / "_demo"


def _shared_candidates() -> list[Path]:
    here = Path(__file__).resolve()
    cands = [Path.cwd() / ".." / "shared", Path.cwd() / "shared"]
    # src/mixq/paths.py -> repo root is parents[2]; shared/ sits beside the repo.
    if len(here.parents) > 3:
        cands.append(here.parents[3] / "shared")
    return cands


def _resolve(arg: str | os.PathLike | None, env: str, sub: str) -> Path | None:
    if arg is not None:
        path = Path(arg).expanduser()
        if not path.is_dir():
            raise MixqError(f"{sub} root {str(path)!r} is not a folder (given by argument)")
        return path
    value = os.environ.get(env)
    if value:
        path = Path(value).expanduser()
        if not path.is_dir():
            raise MixqError(f"{sub} root {value!r} from ${env} is not a folder")
        return path
    for cand in _shared_candidates():
        if (cand / sub).is_dir():
            return (cand / sub).resolve()
    return None


def resolve_data_root(arg: str | os.PathLike | None = None) -> Path | None:
    """Find the data folder (holding ``cifar10-jpeg/`` and ``imagenet-sample/``).

    Args:
        arg: explicit folder (``--data-root``); wins over everything else.

    Returns:
        The folder, or ``None`` when nothing was given and no ``../shared/data`` exists (callers then
        fall back to the embedded demo data).

    Raises:
        MixqError: when an explicitly given folder (argument or ``$MIXQ_DATA``) does not exist.
    """
    return _resolve(arg, "MIXQ_DATA", "data")


def resolve_model_root(arg: str | os.PathLike | None = None) -> Path | None:
    """Find the checkpoint folder (holding ``cifar10/`` and ``imagenet/``), like :func:`resolve_data_root`.

    Args:
        arg: explicit folder (``--model-root``).

    Returns:
        The folder, or ``None`` when nothing was found (callers fall back to the embedded checkpoint).
    """
    return _resolve(arg, "MIXQ_MODELS", "models")


def output_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create an output folder, or fail with one clear message when the path is a file or under a file.

    Args:
        path: the folder.
        what: how to name it in the message.

    Returns:
        The folder, created if needed.
    """
    out = Path(path)
    for p in [out, *out.parents]:
        if p.exists() and not p.is_dir():
            where = "is a file" if p == out else f"lies under the file {str(p)!r}"
            raise MixqError(f"{what} {str(out)!r} {where}; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MixqError(f"cannot create {what} {str(out)!r}: {exc.strerror}") from None
    return out
