"""The logging hook: one record per retry, as the package always logged."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .._compat import slotted
from ._data import RetryDetails

__all__ = ["LoggingHook"]


@slotted
@dataclass(frozen=True, slots=True)
class LoggingHook:
    """Log each retry on a logger: ``retrying PostInputs: attempt 1 got UNAVAILABLE; waiting
    0.100 s``. Registered by default.

    The record carries the same facts as fields, for handlers that want them: ``rpc_method``
    (the short method name), ``attempt``, ``outcome`` and ``wait``.

    Attributes:
        level: The records' level (``logging.DEBUG`` by default).
        logger: The logger's name.

    Raises:
        ValueError: ``level`` is not an int or ``logger`` not a string.
    """

    level: int = logging.DEBUG
    logger: str = "clarifai_interceptor"
    _log: logging.Logger = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.level, int) or isinstance(self.level, bool):
            raise ValueError(f"level must be a logging level (an int), got {self.level!r}")
        if not isinstance(self.logger, str):
            raise ValueError(f"logger must be a logger's name, got {type(self.logger).__name__}")
        object.__setattr__(self, "_log", logging.getLogger(self.logger))

    def __call__(self, details: RetryDetails) -> None:
        """Log ``details`` (a hook: not called directly)."""
        log = self._log
        if not log.isEnabledFor(self.level):
            return
        method = details.method.rsplit("/", 1)[-1]
        log.log(
            self.level,
            "retrying %s: attempt %d got %s; waiting %.3f s",
            method,
            details.attempt,
            details.outcome,
            details.wait,
            extra={
                "rpc_method": method,
                "attempt": details.attempt,
                "outcome": details.outcome,
                "wait": details.wait,
            },
        )
