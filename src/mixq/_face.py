"""Make a package callable, so that ``mixq.allocate(...)`` and ``mixq.allocate.ilp`` both work.

A package and the verb named after it (``mixq.allocate``, later ``mixq.export``) share one attribute of
``mixq``. Rather than let a function shadow the package, the package module itself becomes callable: its
class is swapped for a :class:`types.ModuleType` subclass whose ``__call__`` runs the verb.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any


def callable_package(name: str, verb: Callable[..., Any]) -> None:
    """Let ``sys.modules[name](...)`` call ``verb(...)``.

    Args:
        name: the package's ``__name__``.
        verb: the function the package stands for.
    """

    class _Package(types.ModuleType):
        __doc__ = sys.modules[name].__doc__

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return verb(*args, **kwargs)

    _Package.__call__.__doc__ = verb.__doc__
    sys.modules[name].__class__ = _Package
