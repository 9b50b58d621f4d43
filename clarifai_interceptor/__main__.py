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
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import grpc
from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2, status_pb2

from . import (
    ClarifaiInterceptor,
    Credentials,
    MissingCredentialsError,
    RetryPolicy,
    insecure_channel,
    secure_channel,
    use_credentials,
)
from ._channel import channel_options, resolve_target
from ._cli_call import CliError, Say, _Case, _failure, _invoke, _run
from ._cli_parser import _PROG, EXIT_AUTH, EXIT_FAILURE, EXIT_OK, build_parser, secret_values
from .testing import FakeClarifai, Status, Stream

__all__ = ["DEMO_NARROW_KEY", "DEMO_PAT", "main"]

#: The embedded demo's obviously fake secrets: a PAT with every scope, an API key with one.
DEMO_PAT = "fake-demo-pat"
DEMO_NARROW_KEY = "fake-narrow-key"


_LABELS = {"pat": "PAT", "api_key": "API key", "session_token": "session token"}
_ENV = "CLARIFAI_PAT (with CLARIFAI_USER_ID), CLARIFAI_API_KEY or CLARIFAI_SESSION_TOKEN"


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
