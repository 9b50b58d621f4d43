"""The command line: ``clarifai-interceptor demo``, ``scopes`` and ``fake``.

Exit status: 0 success; 2 missing or malformed credentials, or Clarifai refused them (an auth or
scope failure); 1 anything else. A reader that stops reading early (``scopes | head``) does not
change the status. No secret given to the command line is ever printed: a header that carries
one is shown as ``Key <redacted>``; ``--pat`` / ``--api-key`` read the secret from a prompt or
stdin, never from argv (which other users of the machine can see), and a value typed after them
anyway (``--pat=...``, ``--pa=...``, ``--pat ...``) appears in no message; nor does a bad
value of another option (``--timeout=<PAT>``), nor a target's user info (``USER:PASSWORD@``,
refused). Error messages are never cut, only the values they quote. ``fake`` prints the demo's
two fake secrets, which are public constants of this module.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2, status_pb2

from . import (
    NEVER_RETRIED_STATUSES,
    ClarifaiInterceptor,
    Credentials,
    MissingCredentialsError,
    RetryPolicy,
    insecure_channel,
    secure_channel,
    use_credentials,
)
from ._channel import channel_options, resolve_target
from ._cli_parser import _PROG, EXIT_AUTH, EXIT_FAILURE, EXIT_OK, build_parser, secret_values
from ._target import redact
from .testing import FakeClarifai, Status, Stream

__all__ = ["DEMO_NARROW_KEY", "DEMO_PAT", "main"]

#: The embedded demo's obviously fake secrets: a PAT with every scope, an API key with one.
DEMO_PAT = "fake-demo-pat"
DEMO_NARROW_KEY = "fake-narrow-key"


_V2 = service_pb2.DESCRIPTOR.services_by_name["V2"]
_LABELS = {"pat": "PAT", "api_key": "API key", "session_token": "session token"}
_SECRET_KEYS = frozenset({"authorization", "x-clarifai-session-token"})
_AUTH_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
_STATUS_CODES = frozenset(status_code_pb2.StatusCode.values())
# A PAT call that names no user (CLARIFAI_USER_ID unset) is refused as an invalid request.
_AUTH_STATUSES = frozenset(
    status_code_pb2.StatusCode.Name(s)
    for s in (*NEVER_RETRIED_STATUSES, status_code_pb2.CONN_INVALID_REQUEST)
)
_ENV = "CLARIFAI_PAT (with CLARIFAI_USER_ID), CLARIFAI_API_KEY or CLARIFAI_SESSION_TOKEN"
_PAD = "      "
_SHOWN = 200  # characters of a target in a message
_SAID = 1000  # characters of a server's description in a message

Say = Callable[[str], None]


class CliError(Exception):
    """A failure reported as one line on stderr, with the exit status it maps to."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(_line(message))
        self.status = status


def _line(text: object, cut: int | None = None) -> str:
    """``text`` on one line; cut to ``cut`` characters (with "...") when it is unbounded text
    from elsewhere (a server's description): never cut the explanation of an error."""
    line = " ".join(str(text or "").split())
    return line if cut is None or len(line) <= cut else line[:cut] + "..."


def _where(target: str) -> str:
    """A target for a message: user info redacted (checked targets have none), cut."""
    text = redact(target)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _quiet(text: str) -> None:
    pass


def _error(message: object) -> None:
    print(f"{_PROG}: error: {message}", file=sys.stderr, flush=True)


def _print(text: str) -> None:
    """Print a line on stdout; once the reader has gone (``| head``), print nothing more."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _drop_stdout()


def _drop_stdout() -> None:
    # Python flushes stdout again at exit: point it at devnull, or that fails too (and later
    # lines would raise again). The Python docs' recipe for SIGPIPE.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# -- one call, observed ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Case:
    name: str
    method: str
    story: str
    request: Any
    script: tuple[Any, ...] = ()
    attempts: int | None = None
    status: str = "SUCCESS"
    messages: int | None = None
    narrow: bool = False  # made with the narrow API key, not the channel's PAT


class _Outcome(NamedTuple):
    code: str  # the gRPC status code's name
    status: str | None  # the Clarifai body status of the (last) response, if any
    description: str
    messages: int
    response: Any


class _Waits(logging.Handler):
    """Collects the waits the retry engine logs (one DEBUG record per retry), echoing each."""

    def __init__(self, say: Say) -> None:
        super().__init__(logging.DEBUG)
        self.say, self.waits = say, list[float]()

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args  # (method, attempt, outcome, wait): see instrumentation._logging
        if str(record.msg).startswith("retrying") and isinstance(args, tuple) and len(args) == 4:
            _, n, got, wait = args
            if isinstance(n, int) and isinstance(wait, int | float):
                self.waits.append(round(float(wait), 3))
                self.say(
                    f"{_PAD}attempt {n} got {got}; waiting {wait:.2f} s before attempt {n + 1}"
                )


@contextlib.contextmanager
def _watching(say: Say) -> Iterator[_Waits]:
    logger = logging.getLogger("clarifai_interceptor")
    handler, level = _Waits(say), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _invoke(stub: Any, method: str, request: Any, timeout: float) -> _Outcome:
    call, last, count = getattr(stub, method), None, 0
    try:
        if _V2.methods_by_name[method].server_streaming:
            for last in call(request, timeout=timeout):  # noqa: B007 (the last one is kept)
                count += 1
        else:
            last, count = call(request, timeout=timeout), 1
    except grpc.RpcError as exc:
        return _Outcome(exc.code().name, None, _line(exc.details(), _SAID), count, None)
    if last is None:
        return _Outcome("OK", None, "", 0, None)
    code = last.status.code
    name = status_code_pb2.StatusCode.Name(code) if code in _STATUS_CODES else f"status {code}"
    return _Outcome("OK", name, _line(last.status.description, _SAID), count, last)


def _seen(metadata: Any, request: Any) -> dict[str, Any]:
    """One attempt's metadata (secrets redacted) and ``user_app_id``, as JSON values."""
    shown = []
    for key, value in metadata or ():
        if isinstance(value, bytes):
            value = f"<{len(value)} bytes>"  # noqa: PLW2901
        elif key in _SECRET_KEYS:
            value = "Key <redacted>" if value.startswith("Key ") else "<redacted>"  # noqa: PLW2901
        shown.append([key, value])
    uai = getattr(request, "user_app_id", None)
    ids = {"user_id": uai.user_id, "app_id": uai.app_id} if uai and uai.ByteSize() else None
    return {"metadata": shown, "user_app_id": ids}


def _run(
    case: _Case, stub: Any, timeout: float, say: Say, observe: Callable[[], list[Any]], seen_as: str
) -> tuple[dict[str, Any], _Outcome]:
    """Make the case's call and report it; ``observe`` gives each attempt's metadata and request."""
    with _watching(say) as watch:
        outcome = _invoke(stub, case.method, case.request, timeout)
    attempts = observe()
    wanted = {"attempts": case.attempts, "grpc_code": "OK", "status": case.status}
    wanted = {k: v for k, v in {**wanted, "messages": case.messages}.items() if v is not None}
    result: dict[str, Any] = {
        "name": case.name,
        "method": case.method,
        "attempts": len(attempts),
        "waits": watch.waits,
        "grpc_code": outcome.code,
        "status": outcome.status,
        "description": outcome.description,
        "messages": outcome.messages,
        seen_as: _seen(*attempts[-1]) if attempts else None,
        "expected": wanted,
    }
    result["ok"] = len(watch.waits) == len(attempts) - 1 and all(
        result[key] == value for key, value in wanted.items()
    )
    waits = ", ".join(f"{wait:.2f} s" for wait in watch.waits) or "none"
    detail = f" ({outcome.description})" if outcome.description else ""
    say(f"{_PAD}final: gRPC {outcome.code}, status {outcome.status or '-'}{detail}")
    say(f"{_PAD}attempts: {len(attempts)}; waits: {waits}; messages: {outcome.messages}")
    if attempts:
        seen = result[seen_as]
        shown = [f"{key}: {value}" for key, value in seen["metadata"] if key != "user-agent"]
        ids = seen["user_app_id"]
        shown.append(f"user_app_id: {ids['user_id']}/{ids['app_id']}" if ids else "no user_app_id")
        say(f"{_PAD}{seen_as} (last attempt): {', '.join(shown)}")
    expected = ", ".join(f"{key} {value}" for key, value in wanted.items())
    say(f"{_PAD}{'as expected' if result['ok'] else 'NOT AS EXPECTED'} ({expected})")
    return result, outcome


def _failure(
    method: str, outcome: _Outcome, target: str, timeout: float, who: str
) -> CliError | None:
    """None for a success; else the one-line error that explains it, with its exit status."""
    if outcome.code == "OK" and outcome.status == "SUCCESS":
        return None
    said = outcome.status or outcome.code
    detail = f" ({outcome.description})" if outcome.description else ""
    if outcome.code in _AUTH_CODES or outcome.status in _AUTH_STATUSES:
        return CliError(f"Clarifai refused the {who}: {said}{detail}", EXIT_AUTH)
    if outcome.code == "UNAVAILABLE":
        return CliError(f"cannot reach {_where(target)}: UNAVAILABLE{detail}")
    if outcome.code == "DEADLINE_EXCEEDED":
        return CliError(f"no answer from {_where(target)} within {timeout:g} s (DEADLINE_EXCEEDED)")
    return CliError(f"{method} failed: {said}{detail}")


# -- credentials and targets ---------------------------------------------------------------------


def _target(target: str | None) -> str:
    try:
        return resolve_target(target)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _env_credentials(hint: str = "") -> tuple[Credentials, str]:
    """Credentials from the environment, and a description naming the variable that held them."""
    try:
        credentials = Credentials.from_env()
    except MissingCredentialsError:
        raise CliError(f"no Clarifai credentials: set {_ENV}{hint}", EXIT_AUTH) from None
    except ValueError as exc:
        raise CliError(f"Clarifai credentials in the environment: {exc}", EXIT_AUTH) from None
    return credentials, f"{_LABELS[credentials.kind]} from CLARIFAI_{credentials.kind.upper()}"


def _flag_credentials(kind: str) -> tuple[Credentials, str]:
    """Credentials whose secret comes from a prompt (on a terminal), else stdin's first line."""
    label, flag, stdin = _LABELS[kind], "--" + kind.replace("_", "-"), sys.stdin or io.StringIO()
    secret, source = "", f"{label} from {flag} ({'prompt' if stdin.isatty() else 'stdin'})"
    if stdin.isatty():
        with contextlib.suppress(EOFError):
            secret = getpass.getpass(f"Clarifai {label}: ")
    else:
        secret = stdin.readline()
    secret = secret.strip()
    if not secret:
        raise CliError(f"no {label} given: {flag} reads it from a prompt or stdin", EXIT_AUTH)
    try:
        if kind == "api_key":
            return Credentials.from_api_key(secret), source
        user, app = os.environ.get("CLARIFAI_USER_ID"), os.environ.get("CLARIFAI_APP_ID")
        return Credentials.from_pat(secret, user_id=user or None, app_id=app or None), source
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}", EXIT_AUTH) from None


# -- demo ----------------------------------------------------------------------------------------


def _demo_fake(args: argparse.Namespace, say: Say) -> list[dict[str, Any]]:
    predict = service_pb2.PostModelOutputsRequest(model_id="demo-model")
    done = service_pb2.MultiOutputResponse(status=status_pb2.Status(code=status_code_pb2.SUCCESS))
    down = grpc.StatusCode.UNAVAILABLE
    throttled = Status(status_code_pb2.CONN_THROTTLED, "slow down")
    # fmt: off
    cases = [
        _Case("unavailable burst", "PostModelOutputs", "fails UNAVAILABLE twice, then succeeds",
              predict, (down, down), attempts=3),
        _Case("throttled", "PostModelOutputs", "answers CONN_THROTTLED once, then succeeds",
              predict, (throttled,), attempts=2),
        _Case("streaming", "GenerateModelOutputs", "fails UNAVAILABLE before its first message, "
              "then streams 3 messages", predict, (down, Stream([done] * 3)), attempts=2,
              messages=3),
        _Case("scope error", "PostModelOutputs", "called with an API key that has only the "
              "Inputs_Get scope: passed straight through, never retried", predict, attempts=1,
              status="CONN_INSUFFICIENT_SCOPES", narrow=True),
    ]
    # fmt: on
    pat = Credentials.from_pat(DEMO_PAT, user_id="demo-user", app_id="demo-app")
    narrow = Credentials.from_api_key(DEMO_NARROW_KEY)
    policy = RetryPolicy(initial_backoff=0.2, jitter=0.2, timeout=args.timeout)
    secrets = {DEMO_PAT: None, DEMO_NARROW_KEY: ["Inputs_Get"]}
    results = []
    fake = FakeClarifai(secrets=secrets).start()
    try:
        with insecure_channel(fake.target, pat, retry=policy) as channel:
            say(f"{_PROG} demo: scripted calls to a fake Clarifai API at {fake.target}, through")
            say(
                f"  insecure_channel() + V2Stub with a PAT for demo-user/demo-app; retries: up to "
                f"{policy.max_attempts} attempts, waits from {policy.initial_backoff:g} s, "
                f"x{policy.multiplier:g}, each shortened by up to {policy.jitter:.0%} (jitter)"
            )
            stub = service_pb2_grpc.V2Stub(channel)
            for number, case in enumerate(cases, 1):
                fake.clear()
                fake.script(case.method, *case.script)
                say(f"[{number}/{len(cases)}] {case.name}: {case.method} {case.story}")
                with use_credentials(narrow) if case.narrow else contextlib.nullcontext():
                    observe = lambda: [(call.metadata, call.request) for call in fake.calls]  # noqa: E731
                    results.append(_run(case, stub, args.timeout, say, observe, "received")[0])
    finally:
        fake.stop(grace=5.0)  # abruptly, grpcio may log the server's GOAWAY on the terminal
    return results


class _Recorder(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Beneath the package's interceptor, it sees each attempt as it goes on the wire."""

    def __init__(self) -> None:
        self.attempts: list[tuple[Any, Any]] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.attempts.append((details.metadata, request))
        return continuation(details, request)


def _demo_remote(args: argparse.Namespace, say: Say) -> tuple[list[Any], CliError | None]:
    target, (credentials, who) = _target(args.target), _env_credentials()
    cases = [
        _Case("my scopes", "MyScopes", "(what the secret may do)", service_pb2.MyScopesRequest()),
        _Case(
            "list models", "ListModels", "(per_page=1)", service_pb2.ListModelsRequest(per_page=1)
        ),
    ]
    if args.insecure:
        raw = grpc.insecure_channel(target, options=channel_options(()))
    else:
        raw = grpc.secure_channel(
            target, grpc.ssl_channel_credentials(), options=channel_options(())
        )
    # The sync interceptor here, not the channel wrapper: a recorder beneath it sees what each
    # attempt sent, user_app_id included (the wrapper fills it in only while serializing).
    recorder, results, refused = _Recorder(), [], None
    interceptor = ClarifaiInterceptor(credentials, retry=RetryPolicy(timeout=args.timeout))
    with raw, grpc.intercept_channel(raw, interceptor, recorder) as channel:
        say(f"{_PROG} demo: read-only calls to {target} with the {who}")
        for number, case in enumerate(cases, 1):
            recorder.attempts.clear()
            say(f"[{number}/{len(cases)}] {case.name}: {case.method} {case.story}")
            stub, observe = service_pb2_grpc.V2Stub(channel), lambda: list(recorder.attempts)
            result, outcome = _run(case, stub, args.timeout, say, observe, "sent")
            results.append(result)
            error = _failure(case.method, outcome, target, args.timeout, who)
            if error is not None and outcome.code in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}:
                raise error
            if error is not None and error.status == EXIT_AUTH:
                refused = refused or error
    return results, refused


def _demo(args: argparse.Namespace) -> int:
    say: Say = _quiet if args.json else _print
    refused = None
    if args.target is None:
        results = _demo_fake(args, say)
    else:
        results, refused = _demo_remote(args, say)
    failed = [result["name"] for result in results if not result["ok"]]
    if args.json:
        _print(json.dumps(results, indent=2))
    elif failed:
        say(f"{len(failed)} of {len(results)} cases did not go as expected: {', '.join(failed)}")
    else:
        say(f"all {len(results)} cases went as expected")
    if refused is not None:
        _error(refused)
        return refused.status
    return EXIT_FAILURE if failed else EXIT_OK


# -- scopes --------------------------------------------------------------------------------------


def _scopes(args: argparse.Namespace) -> int:
    target = _target(args.target)
    if args.secret is None:
        credentials, who = _env_credentials(", or use --pat / --api-key")
    else:
        credentials, who = _flag_credentials(args.secret)
    policy = RetryPolicy(timeout=args.timeout)
    if args.insecure:
        channel = insecure_channel(target, credentials, retry=policy)
    else:
        channel = secure_channel(target, credentials, retry=policy)
    with channel:
        stub, request = service_pb2_grpc.V2Stub(channel), service_pb2.MyScopesRequest()
        outcome = _invoke(stub, "MyScopes", request, args.timeout)
    error = _failure("MyScopes", outcome, target, args.timeout, who)
    if error is not None:
        raise error
    response, uai = outcome.response, credentials.user_app_id
    acting = f", acting on {uai.user_id}/{uai.app_id or '*'}" if uai is not None else ""
    lines = [f"MyScopes at {target} with the {who}{acting}"]
    if response.HasField("app") and response.app.id:
        lines.append(f"app: {response.app.user_id}/{response.app.id}")
    lines += [f"scopes ({len(response.scopes)}):", *(f"  {scope}" for scope in response.scopes)]
    lines += [f"endpoints ({len(response.endpoints)}):", *(f"  {e}" for e in response.endpoints)]
    _print("\n".join(lines))
    return EXIT_OK


# -- fake --------------------------------------------------------------------------------------


#: What ``fake`` serves: the demo's secrets, a PAT with every scope and a one-scope API key.
_FAKE_SECRETS: dict[str, list[str] | None] = {DEMO_PAT: None, DEMO_NARROW_KEY: ["Inputs_Get"]}


def _fake(args: argparse.Namespace) -> int:
    fake = FakeClarifai(secrets=_FAKE_SECRETS, pats=[DEMO_PAT], port=args.port)
    try:
        fake.start()
    except RuntimeError:
        raise CliError(f"cannot listen on 127.0.0.1:{args.port} (is the port in use?)") from None
    stop = threading.Event()
    restore = None
    if threading.current_thread() is threading.main_thread():  # `kill` stops it as Ctrl-C does
        restore = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        target = fake.target
        _print(f"{_PROG} fake: a fake Clarifai API on {target} (plain TCP); Ctrl-C stops it")
        _print(
            f"  it knows the PAT {DEMO_PAT} (every scope; name a user: CLARIFAI_USER_ID) and "
            f"the API key {DEMO_NARROW_KEY} (Inputs_Get only); other secrets get CONN_KEY_INVALID"
        )
        _print("  try, from another terminal:")
        _print(
            f"    CLARIFAI_API_KEY={DEMO_NARROW_KEY} {_PROG} scopes --insecure --target {target}"
        )
        _print(
            f"    CLARIFAI_PAT={DEMO_PAT} CLARIFAI_USER_ID=me {_PROG} scopes --insecure "
            f"--target {target}"
        )
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(0.5):
                pass
    finally:
        fake.stop(grace=1.0)
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
    _print(f"{_PROG} fake: stopped after {len(fake.calls)} calls")
    return EXIT_OK


def _parser(hidden: frozenset[str] = frozenset()) -> argparse.ArgumentParser:
    return build_parser({"demo": _demo, "scopes": _scopes, "fake": _fake}, hidden)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when None.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(argv)
    finally:
        try:  # `--help | head`: argparse ignores the broken pipe, and exit would not
            sys.stdout.flush()
        except BrokenPipeError:
            _drop_stdout()


def _main(argv: list[str]) -> int:
    try:
        args = _parser(secret_values(argv)).parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    try:
        status: int = args.run(args)
    except CliError as exc:
        _error(exc)
        return exc.status
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_FAILURE
    return status


if __name__ == "__main__":
    sys.exit(main())
