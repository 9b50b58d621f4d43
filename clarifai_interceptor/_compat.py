"""What Python 3.10, the oldest ``python_requires`` allows, gets wrong, made right in one place."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["slotted"]

_Class = TypeVar("_Class", bound=type)


def slotted(cls: _Class) -> _Class:
    """``cls``, a ``dataclass(slots=True)``, without the stale ``__weakref__`` 3.10 leaves on it.

    Python 3.10 builds the slotted class from a copy of the original class's ``__dict__``,
    ``__weakref__`` included: a descriptor of the original class, which applies to no instance
    of the new one, so ``getattr(obj, "__weakref__")``, and with it ``inspect.getmembers(obj)``
    and ``help(obj)``, raise ``TypeError``. Python 3.11 leaves it out of the copy; this drops it
    the same way (on 3.11 and later there is nothing to drop). Apply it above ``@dataclass``.
    """
    stale = cls.__dict__.get("__weakref__")
    if stale is not None and getattr(stale, "__objclass__", cls) is not cls:
        delattr(cls, "__weakref__")
    return cls
