"""Provenance for result files: library versions and the machine they were measured on."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

_PACKAGES = ("mixq", "torch", "numpy", "scipy", "pillow")


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape mixq's numbers.

    Returns:
        Package name -> version string (``"absent"`` when not installed).
    """
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    import torch

    out["torch_threads"] = str(torch.get_num_threads())
    return out
