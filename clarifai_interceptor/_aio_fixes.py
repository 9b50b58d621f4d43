"""Fixes for ``grpc.aio`` bugs of older grpcio that the caller of an intercepted call would see.

An interceptor never holds the call object gRPC hands the caller (gRPC wraps whatever the
interceptors return in its own ``InterceptedCall``), so a bug in that object cannot be worked
around from the interceptor. Each fix here gives gRPC's class the behaviour of the grpcio
release that fixed it, only on the releases before: it applies to every intercepted aio call in
the process, as on the fixed releases, and nothing changes on those.
"""

from __future__ import annotations

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
        _cancel_after_an_error_is_false(_interceptor.InterceptedCall)


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


def _cancel_after_an_error_is_false(call_class: Any) -> None:
    """grpcio 1.82 and older: once an interceptor raised anything but an ``AioRpcError`` (our
    `RateLimitedError`, a ``ValueError`` for bad metadata...), ``cancel()`` on the caller's
    call raises it again, and so does ``InterceptedCall.__del__``, which calls it: "Exception
    ignored in ... __del__" on stderr whenever such a call is collected. 1.83 returns False."""
    cancel = call_class.cancel

    def cancel_unless_failed(self: Any) -> bool:
        task = self._interceptors_task
        if task.done() and not task.cancelled() and task.exception() is not None:
            return False  # nothing in flight to cancel
        return bool(cancel(self))

    call_class.cancel = cancel_unless_failed
