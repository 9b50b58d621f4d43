"""An in-process fake of Clarifai's gRPC API, for tests.

`FakeClarifai` runs a real `grpc.server` on ``127.0.0.1`` (a free port) that serves every method
of the real ``clarifai.api.V2`` service with the real request and response message types, so the
real `V2Stub` (and any interceptor in front of it) talks to it exactly as to Clarifai. Each call
is recorded (method, metadata, request messages, arrival time) and answered from a per-method
script of outcomes, then from a per-method default, then from the built-in default: a response
whose ``status.code`` is ``SUCCESS``.

Example:
    >>> predict = ["Predict", "Models_Get", "Concepts_Get", "Apps_Get"]  # PostModelOutputs
    >>> with FakeClarifai(secrets={"fake-api-key": predict}) as fake:
    ...     fake.script("PostModelOutputs", grpc.StatusCode.UNAVAILABLE, Status(11005))
    ...     ...  # call fake.target through V2Stub, then inspect fake.calls_to("PostModelOutputs")
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Collection, Iterator, Mapping
from concurrent import futures
from typing import Any, cast

import grpc
from clarifai_grpc.grpc.api import service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from ._fake_script import (
    _ALL_SCOPES,
    _DEFAULT_STREAM_LENGTH,
    _METHODS,
    _NO_USER,
    _REQUIRED_SCOPES,
    _SERVICE,
    Delay,
    Fail,
    Outcome,
    RecordedCall,
    Reply,
    Status,
    Stream,
    _abort,
    _method,
    _names_a_user,
    _normalize,
    _Played,
    _secret_of,
    _status_message,
)
from ._switch import set_testing

__all__ = [
    "Delay",
    "Fail",
    "FakeClarifai",
    "FakeServicer",
    "Outcome",
    "RecordedCall",
    "Reply",
    "Status",
    "Stream",
    "set_testing",
]


class FakeClarifai:
    """A real gRPC server on 127.0.0.1 that fakes every ``clarifai.api.V2`` method.

    Without a script, a method answers a response of its type with ``status.code = SUCCESS``;
    a server-streaming method sends 3 such messages; a client-streaming method first reads (and
    records) every request. ``MyScopes`` answers the caller's scopes and the methods they allow.

    Auth, only when ``secrets`` is given, is checked after the call is recorded and before any
    script is used. The secret comes from ``authorization: Key <secret>``, else from
    ``x-clarifai-session-token``. A missing, malformed or unknown secret gets body status
    ``CONN_KEY_INVALID``; a PAT (a secret listed in ``pats``) whose request has a
    ``user_app_id`` field naming no user gets ``CONN_INVALID_REQUEST`` saying so (a PAT acts
    across a user's apps, so Clarifai needs to be told which); a secret lacking a scope the
    method needs (Clarifai's ``cl_depending_scopes`` method option) gets
    ``CONN_INSUFFICIENT_SCOPES`` naming the missing scopes. Each comes with gRPC OK in an empty
    response (one message for server streams).

    Args:
        secrets: None for no auth checking. Otherwise maps each valid secret to its scope names
            (``scope_pb2.S`` names such as ``"Predict"``), or to None for every scope. The
            scope ``"All"`` also grants every scope. A method needs every scope of its
            ``cl_depending_scopes``: ``PostModelOutputs`` needs ``Predict``, ``Models_Get``,
            ``Concepts_Get`` and ``Apps_Get``.
        pats: The secrets in ``secrets`` that are PATs: their calls must name a user in
            ``user_app_id`` (where the request has the field). The others act as API keys,
            which imply their app.
        max_workers: Threads serving calls (the most calls in flight at once).
        port: The port to serve on, 0 for a free one (a fixed port lets a test stop a fake
            and start another where clients already point; while one serves there, starting
            another on it fails).
        tls: ``(private_key_pem, certificate_chain_pem)`` to serve TLS (for ``localhost``),
            or None for plain TCP.

    Raises:
        ValueError: A scope name is not a Clarifai scope, or a PAT is not one of ``secrets``.
        TypeError: Scopes or ``pats`` given as a single str.
    """

    def __init__(
        self,
        *,
        secrets: Mapping[str, Collection[str] | None] | None = None,
        pats: Collection[str] = (),
        max_workers: int = 32,
        port: int = 0,
        tls: tuple[bytes, bytes] | None = None,
    ) -> None:
        self._secrets: dict[str, frozenset[str] | None] | None = None
        if secrets is not None:
            self._secrets = {}
            for secret, scopes in secrets.items():
                if isinstance(scopes, str):
                    raise TypeError("scopes must be a collection of scope names, not a str")
                unknown = set(scopes or ()) - _ALL_SCOPES
                if unknown:
                    msg = f"unknown Clarifai scopes: {sorted(unknown)}"
                    raise ValueError(msg)
                every = scopes is None or "All" in scopes
                self._secrets[secret] = None if every else frozenset(scopes or ())
        if isinstance(pats, str):
            raise TypeError("pats must be a collection of secrets, not a str")
        self._pats = frozenset(pats)
        if self._pats - set(self._secrets or ()):
            raise ValueError("every secret in pats must also be a key of secrets")
        self._max_workers = max_workers
        self._bind_port = port
        self._tls = tls
        self._lock = threading.Lock()
        self._calls: list[RecordedCall] = []
        self._scripts: dict[str, deque[_Played]] = {}
        self._defaults: dict[str, _Played] = {}
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._port = 0

    def script(self, method: str, *outcomes: Outcome) -> None:
        """Append outcomes for a method, each used by one call, in order of arrival.

        Args:
            method: Short V2 method name, e.g. ``"PostModelOutputs"``.
            *outcomes: What the next calls get, one outcome per call.

        Raises:
            ValueError: Unknown method, a `Stream` for a method that does not stream its
                responses, or a message of the wrong response type.
            TypeError: Something that is not an outcome.
        """
        descriptor = _method(method)
        played = [_normalize(descriptor, outcome) for outcome in outcomes]
        with self._lock:
            self._scripts.setdefault(method, deque()).extend(played)

    def set_default(self, method: str, outcome: Outcome) -> None:
        """Set what a method answers once its script is used up.

        Raises:
            ValueError: As for `script`.
            TypeError: As for `script`.
        """
        played = _normalize(_method(method), outcome)
        with self._lock:
            self._defaults[method] = played

    @property
    def calls(self) -> list[RecordedCall]:
        """A copy of every call received so far, in order of recording."""
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str) -> list[RecordedCall]:
        """The calls received so far for one method.

        Raises:
            ValueError: Unknown method name.
        """
        _method(method)
        return [call for call in self.calls if call.method == method]

    def clear(self) -> None:
        """Forget recorded calls and unused scripts (defaults set by `set_default` stay)."""
        with self._lock:
            self._calls.clear()
            self._scripts.clear()

    @property
    def target(self) -> str:
        """The address to dial, ``"127.0.0.1:PORT"``.

        Raises:
            RuntimeError: The fake is not started.
        """
        if self._server is None:
            raise RuntimeError("FakeClarifai is not started")
        return f"127.0.0.1:{self._port}"

    def start(self) -> FakeClarifai:
        """Start serving on the port given (a free one by default); return self.

        Raises:
            RuntimeError: Already started, or the port could not be bound.
        """
        if self._server is not None:
            raise RuntimeError("FakeClarifai is already started")
        handlers = {name: self._handler(method) for name, method in _METHODS.items()}
        executor = futures.ThreadPoolExecutor(max_workers=self._max_workers)
        server = grpc.server(executor)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),)
        )
        address = f"127.0.0.1:{self._bind_port}"
        try:
            if self._bind_port:
                _free_or_raise(self._bind_port)
            if self._tls is None:
                port = server.add_insecure_port(address)
            else:
                credentials = grpc.ssl_server_credentials([self._tls])
                port = server.add_secure_port(address, credentials)
            if not port:  # older grpcio returns 0 rather than raise
                raise RuntimeError("bind failed")  # handled just below
        except RuntimeError:
            executor.shutdown(wait=False)  # not started: the fake stays startable
            raise RuntimeError(
                f"FakeClarifai cannot listen on {address}: the port is in use or not available"
            ) from None
        self._port = port
        self._server, self._executor = server, executor
        server.start()
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (calls in flight are cancelled after ``grace`` seconds); idempotent."""
        server, executor = self._server, self._executor
        self._server, self._executor = None, None
        if server is not None:
            server.stop(grace).wait()
        if executor is not None:
            executor.shutdown(wait=True)

    def __enter__(self) -> FakeClarifai:
        """Start the fake."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the fake."""
        self.stop()

    async def __aenter__(self) -> FakeClarifai:
        """Start the fake (it serves from its own threads; aio clients can call it)."""
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop the fake."""
        self.stop()

    def servicer(self) -> FakeServicer:
        """This fake's ``V2`` methods as a servicer object, for a gRPC server you run yourself.

        The object has one attribute per ``V2`` method, as ``service_pb2_grpc.V2Servicer``
        does, each playing this fake's scripts and defaults, checking its auth and recording
        into `calls` exactly as its own server does: register it with
        ``service_pb2_grpc.add_V2Servicer_to_server(fake.servicer(), server)``, or hand it to
        pytest-grpc as ``grpc_servicer``. The fake need not be started for that (`target` is
        then unset: dial your own server).
        """
        return FakeServicer(self)

    def _behaviour(self, method: MethodDescriptor) -> Any:
        """The servicer function for one method: ``(request or iterator, context) -> reply``."""
        response_class = GetMessageClass(method.output_type)

        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            arrived = time.monotonic()
            requests = tuple(request) if method.client_streaming else (request,)
            responses = self._serve(method, requests, context, arrived)
            return responses if method.server_streaming else next(responses, response_class())

        behaviour.__name__ = behaviour.__qualname__ = method.name
        return behaviour

    def _handler(self, method: MethodDescriptor) -> grpc.RpcMethodHandler[Any, Any]:
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        behaviour = self._behaviour(method)
        kinds = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }
        make = kinds[(method.client_streaming, method.server_streaming)]
        return make(
            behaviour,
            request_deserializer=request_class.FromString,
            response_serializer=response_class.SerializeToString,
        )

    def _serve(
        self,
        method: MethodDescriptor,
        requests: tuple[Message, ...],
        context: grpc.ServicerContext,
        arrived: float,
    ) -> Iterator[Message]:
        metadata = tuple((item[0], item[1]) for item in context.invocation_metadata())
        call = RecordedCall(method.name, metadata, requests, arrived)
        with self._lock:
            self._calls.append(call)
        denial, granted = self._authorize(method, call)
        if denial is not None:
            yield from self._play(method, denial, context)
            return
        with self._lock:
            script = self._scripts.get(method.name)
            outcome = script.popleft() if script else self._defaults.get(method.name)
        if outcome is not None:
            yield from self._play(method, outcome, context)
        elif method.name == "MyScopes":
            yield self._my_scopes(granted)
        else:
            count = _DEFAULT_STREAM_LENGTH if method.server_streaming else 1
            for _ in range(count):
                yield _status_message(method, status_code_pb2.SUCCESS)

    def _authorize(
        self, method: MethodDescriptor, call: RecordedCall
    ) -> tuple[Status | None, frozenset[str] | None]:
        """Return (denial or None, the caller's scopes or None for every scope)."""
        if self._secrets is None:
            return None, None
        secret, denial = _secret_of(call)
        if denial is None and secret not in self._secrets:
            denial = Status(status_code_pb2.CONN_KEY_INVALID, "API key not found")
        if denial is not None:
            return denial, None
        if secret in self._pats and not all(map(_names_a_user, call.requests[:1])):
            return Status(status_code_pb2.CONN_INVALID_REQUEST, _NO_USER), None
        granted = self._secrets[secret]
        missing = _REQUIRED_SCOPES[method.name] - granted if granted is not None else set()
        if missing:
            description = f"Missing scopes: {', '.join(sorted(missing))}"
            return Status(status_code_pb2.CONN_INSUFFICIENT_SCOPES, description), granted
        return None, granted

    def _my_scopes(self, granted: frozenset[str] | None) -> Message:
        scopes = _ALL_SCOPES if granted is None else granted
        response: Any = service_pb2.MultiScopeResponse()
        response.status.code = status_code_pb2.SUCCESS
        response.scopes.extend(sorted(scopes))
        response.endpoints.extend(
            name
            for name, needed in _REQUIRED_SCOPES.items()
            if granted is None or needed <= granted
        )
        return cast("Message", response)

    def _play(
        self, method: MethodDescriptor, outcome: _Played, context: grpc.ServicerContext
    ) -> Iterator[Message]:
        if isinstance(outcome, Delay):
            ended = threading.Event()
            if context.add_callback(ended.set):
                ended.wait(outcome.seconds)
            if context.is_active():
                yield from self._play(method, _normalize(method, outcome.then), context)
        elif isinstance(outcome, Fail):
            _abort(context, outcome)
        elif isinstance(outcome, Status):
            yield _status_message(method, outcome.code, outcome.description)
        elif isinstance(outcome, Reply):
            yield outcome.message
        else:
            yield from outcome.messages
            if outcome.error is not None:
                _abort(context, outcome.error)


class FakeServicer:
    """A `FakeClarifai`'s ``V2`` methods as a servicer object (see `FakeClarifai.servicer`).

    Each ``V2`` method name (``PostModelOutputs``, ``MyScopes``, ...) is an attribute holding
    ``method(request_or_iterator, context)``, served from the fake's scripts, defaults and
    auth, and recorded into its `FakeClarifai.calls`.

    Attributes:
        fake: The `FakeClarifai` whose behaviour this serves.
    """

    def __init__(self, fake: FakeClarifai) -> None:
        self.fake = fake
        for name, method in _METHODS.items():
            setattr(self, name, fake._behaviour(method))  # noqa: SLF001 (its own helper)

    def __getattr__(self, name: str) -> Any:
        """Any name that is not a ``V2`` method (those are set in ``__init__``): an error."""
        msg = f"{type(self).__name__} has no attribute {name!r} (not a clarifai.api.V2 method)"
        raise AttributeError(msg)


def _free_or_raise(port: int) -> None:
    """Raise RuntimeError if ``port`` is taken on 127.0.0.1. gRPC's servers bind with
    SO_REUSEPORT, so a second fake on a fixed port would start and split the calls with the
    first; a plain socket (no SO_REUSEPORT) cannot bind a port such a server holds."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart past TIME_WAIT binds
    try:
        probe.bind(("127.0.0.1", port))
    except OSError:
        raise RuntimeError("bind failed") from None
    finally:
        probe.close()
