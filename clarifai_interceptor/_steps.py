"""The steps of the attempt flow: what `Attempts.flow` asks a driver to do next.

`Ask` a call of the rate limiter's bucket, `Wait` before the next attempt, `Send` attempt k;
`END` is the outcome of a response stream that ended before its first message. Steps are
tuples built in C (``Send((n,))``): a NamedTuple's Python ``__new__`` cost more than the rest
of a step on the happy path.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

__all__ = ["END", "NOTHING", "Ask", "Flow", "Send", "Step", "Wait"]


class Ask(tuple[str, tuple[Any, ...]]):
    """Ask the rate limiter's bucket: ``bucket.<op>(*args)``; ``Ask((op, args))``."""

    __slots__ = ()

    @property
    def op(self) -> str:
        return self[0]

    @property
    def args(self) -> tuple[Any, ...]:
        return self[1]

    def __repr__(self) -> str:
        return f"Ask{tuple(self)!r}"


class Wait(tuple[float]):
    """Wait ``seconds`` before the next attempt; ``Wait((seconds,))``."""

    __slots__ = ()

    @property
    def seconds(self) -> float:
        return self[0]

    def __repr__(self) -> str:
        return f"Wait({self[0]!r})"


class Send(tuple[int]):
    """Start attempt ``number`` and send back its outcome; ``Send((number,))``."""

    __slots__ = ()

    @property
    def number(self) -> int:
        return self[0]

    def __repr__(self) -> str:
        return f"Send({self[0]!r})"


Step = Ask | Wait | Send
Flow = Generator[Step, Any, Any]


class _End:
    """A response stream's end before any message: a success with nothing to judge."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


#: The outcome of a response stream that ended before its first message.
END: Any = _End()
#: "No value given" (an outcome may be None).
NOTHING: Any = object()
