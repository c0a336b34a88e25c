"""Progress bars that appear only on a terminal.

Every long loop in mixq reports progress through :func:`progress_bar`. A bar is drawn only when it is
enabled *and* standard error is a terminal, so logs, redirected output and captured test output stay free
of bar updates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar, drawn only when ``enabled`` and stderr is a terminal.

    Args:
        iterable: what to iterate over (None for a manual bar with ``total=`` and ``update()``).
        enabled: False hides the bar whatever the terminal (``--no-progress``).
        **kwargs: tqdm options (``total``, ``desc``, ``leave``, ``initial``, ...).

    Returns:
        The bar (a disabled bar still iterates and accepts ``update`` / ``set_postfix``).
    """
    # tqdm's disable=None means: disable when the output stream is not a TTY
    return tqdm(iterable, disable=None if enabled else True, **kwargs)
