"""Proxy registry: ``@register_proxy("name")`` on a class, ``list_proxies("hawq*")``, ``get_proxy(name)``.

    proxy = get_proxy("hawq-v2", n_samples=64)
    stats = stats_for(qm, proxy, x, y)          # once: one mini-batch
    scores = proxy.score(stats, bits)          # (n_configs, L) -> (n_configs,), higher = better
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from mixq.errors import MixqError

T = TypeVar("T", bound=type)

_PROXIES: dict[str, type] = {}


def register_proxy(name: str) -> Callable[[T], T]:
    """Class decorator that registers a proxy under ``name`` and sets its ``name`` attribute.

    Args:
        name: registry name (lower case, e.g. ``"hawq-v2"``).

    Returns:
        The decorator; it raises :class:`MixqError` when the name is already taken.
    """

    def deco(cls: T) -> T:
        if name in _PROXIES:
            raise MixqError(f"proxy {name!r} is already registered (by {_PROXIES[name].__qualname__})")
        cls.name = name
        _PROXIES[name] = cls
        return cls

    return deco


def list_proxies(pattern: str = "*") -> list[str]:
    """Registered proxy names matching a shell-style pattern, sorted.

    Args:
        pattern: ``fnmatch`` pattern, e.g. ``"hawq*"``.

    Returns:
        Matching names.
    """
    return sorted(n for n in _PROXIES if fnmatch.fnmatchcase(n, pattern))


def proxy_class(name: str) -> type:
    """The class registered under ``name``.

    Args:
        name: registry name.

    Returns:
        The proxy class.

    Raises:
        MixqError: unknown name (the message lists the registered ones).
    """
    try:
        return _PROXIES[name]
    except KeyError:
        raise MixqError(f"unknown proxy {name!r}; registered proxies: {', '.join(list_proxies())}") from None


def get_proxy(name: str, **options: Any) -> Any:
    """A proxy instance by name.

    Args:
        name: registry name (see :func:`list_proxies`).
        **options: constructor options of that proxy (e.g. ``n_samples`` for ``"hawq-v2"``).

    Returns:
        The proxy (a :class:`mixq.proxies.base.Proxy`).

    Raises:
        MixqError: unknown name or option.
    """
    cls = proxy_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise MixqError(f"bad option for proxy {name!r}: {exc}") from None
