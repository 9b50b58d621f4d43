"""Fixes for ``grpc.aio`` bugs of older grpcio that the caller of an intercepted call would see.

An interceptor never holds the call object gRPC hands the caller (gRPC wraps whatever the
interceptors return in its own ``InterceptedCall``), so a bug in that object cannot be worked
around from the interceptor. Each fix here gives gRPC's class the behaviour of the grpcio
release that fixed it, only on the releases before: it applies to every intercepted aio call in
the process, as on the fixed releases, and nothing changes on those.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

__all__ = ["GRPC_VERSION", "apply"]

#: The installed grpcio's (major, minor).
GRPC_VERSION = tuple(int(part) for part in grpc.__version__.split(".")[:2])


def apply() -> None:
    """Apply the fixes the installed grpcio needs (once: `clarifai_interceptor.aio` calls it)."""
    from grpc.aio import _interceptor  # noqa: PLC0415 (gRPC's private module, only here)

    if GRPC_VERSION < (1, 65):
        _read_ends_with_eof(_interceptor._InterceptedStreamResponseMixin)  # noqa: SLF001
    if GRPC_VERSION < (1, 83):
        _failed_calls_report_it(_interceptor.InterceptedCall)


def _read_ends_with_eof(mixin: Any) -> None:
    """grpcio 1.64 and older: ``read()`` on an intercepted aio response stream raises
    ``StopAsyncIteration`` at the end instead of returning ``grpc.aio.EOF`` as documented
    (grpc/grpc#36581, fixed in 1.65 by grpc/grpc#36660, whose ``read()`` this is)."""
    read = mixin.read

    async def read_until_eof(self: Any) -> Any:
        try:
            return await read(self)
        except StopAsyncIteration:
            return grpc.aio.EOF

    mixin.read = read_until_eof


def _failed_calls_report_it(call_class: Any) -> None:
    """grpcio 1.82 and older: once an interceptor raised anything but an ``AioRpcError`` (our
    `RateLimitedError`, a ``ValueError`` for bad metadata...), the caller's call raises it
    again from ``cancel()`` (so from ``__del__``, which calls it: "Exception ignored in ...
    __del__" on stderr whenever such a call is collected), ``done()``, ``cancelled()`` and
    ``add_done_callback()``, and the done callbacks added before it never run. Here, as in
    1.83: a call that failed so is done, not cancelled, cannot be cancelled, and runs its
    done callbacks."""
    cancel, done, cancelled = call_class.cancel, call_class.done, call_class.cancelled
    add_done_callback = call_class.add_done_callback
    fire = call_class._fire_or_add_pending_done_callbacks  # noqa: SLF001

    def failed(task: asyncio.Task[Any]) -> bool:
        return (
            task.done()
            and not task.cancelled()
            and isinstance(task.exception(), Exception)
            and not isinstance(task.exception(), grpc.aio.AioRpcError)
        )

    def fire_when_failed(self: Any, task: asyncio.Task[Any]) -> None:
        if not failed(task):
            fire(self, task)
            return
        pending, self._pending_add_done_callbacks = self._pending_add_done_callbacks, []
        for callback in pending:
            callback(self)

    def add_when_failed(self: Any, callback: Any) -> None:
        if not failed(self._interceptors_task):
            add_done_callback(self, callback)
            return
        callback(self)

    call_class.cancel = lambda self: False if failed(self._interceptors_task) else cancel(self)
    call_class.done = lambda self: True if failed(self._interceptors_task) else done(self)
    call_class.cancelled = lambda self: (
        False if failed(self._interceptors_task) else cancelled(self)
    )
    call_class.add_done_callback = add_when_failed
    call_class._fire_or_add_pending_done_callbacks = fire_when_failed  # noqa: SLF001
