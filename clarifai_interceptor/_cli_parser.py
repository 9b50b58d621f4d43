"""The command line's parser: options, help texts, and usage errors that never echo a value
typed for a secret (``clarifai_interceptor.__main__`` runs the commands)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from ._version import __version__

__all__ = ["EXIT_AUTH", "EXIT_FAILURE", "EXIT_OK", "build_parser", "secret_values"]

EXIT_OK, EXIT_FAILURE, EXIT_AUTH = 0, 1, 2
_PROG = "clarifai-interceptor"
_EPILOG = """\
exit status:
  0  success (demo: every case went as scripted, or every call succeeded)
  1  anything else: an unreachable or malformed target, a failed call, a usage error
  2  missing or malformed credentials, or Clarifai refused them (an auth or scope failure)"""


_SECRET_FLAGS = ("--pat", "--api-key")
_NO_VALUE = "--pat and --api-key take no value: they read the secret from a prompt or stdin"
_AMBIGUOUS = "ambiguous option: "


def secret_values(argv: Sequence[str]) -> frozenset[str]:
    """Values typed for a secret flag in any spelling argparse accepts: ``--pat=X``, ``--pa=X``,
    ``--api=X`` (abbreviations), or ``--pat X`` (a stray argument after a flag)."""
    values, after_flag = set(), False
    for arg in argv:
        name, equals, value = arg.partition("=")
        is_flag = len(name) > 2 and any(flag.startswith(name) for flag in _SECRET_FLAGS)
        if is_flag and equals:
            values.add(value)
        elif after_flag and not arg.startswith("-"):
            values.add(arg)
        after_flag = is_flag and not equals
    return frozenset(value for value in values if value)


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1 (2 means a credentials problem here) and never echo stray arguments,
    nor anything typed for a secret flag (``hidden``), nor an option's value."""

    hidden: frozenset[str] = frozenset()

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments"):  # `--pat SECRET` must not echo SECRET
            message = f"unrecognized arguments (not shown, in case one is a secret); {_NO_VALUE}"
        elif "invalid choice" in message:  # nor a secret typed where the command goes
            message = "unknown command: choose demo, scopes or fake"
        elif any(value in message for value in self.hidden):  # `--pat=SECRET`, `--pa=SECRET`
            message = f"a value given to a secret flag (not shown); {_NO_VALUE}"
        elif message.startswith(_AMBIGUOUS):  # `--t=VALUE`: name the option, not the value
            option, _, matches = message.removeprefix(_AMBIGUOUS).rpartition(" could match ")
            message = f"{_AMBIGUOUS}{option.partition('=')[0]} could match {matches}"
        self.print_usage(sys.stderr)
        self.exit(EXIT_FAILURE, f"{self.prog}: error: {message}\n")

    def _print_message(self, message: str, file: Any = None) -> None:
        # `--help | head -0`: Python 3.10's argparse lets the broken pipe raise here, so the
        # exit that follows never runs; 3.11 and later ignore it. Do the same on 3.10 (main
        # then sends the unflushed rest to devnull).
        with contextlib.suppress(BrokenPipeError):
            super()._print_message(message, file)


# A bad option value is never echoed: it may be a secret typed in the wrong place
# (`--timeout=<PAT>`). The message names the option (argparse adds it) and what it expects.
_NOT_SHOWN = "(the value given is not shown, in case it is a secret)"


def _seconds(text: str) -> float:
    with contextlib.suppress(ValueError):
        if 0 < (value := float(text)) < float("inf"):
            return value
    raise argparse.ArgumentTypeError(f"must be a positive number of seconds {_NOT_SHOWN}")


def _port(text: str) -> int:
    with contextlib.suppress(ValueError):
        if 0 <= (value := int(text)) <= 65535:
            return value
    raise argparse.ArgumentTypeError(f"must be a TCP port from 0 to 65535 {_NOT_SHOWN}")


_DEMO_HELP = """\
Without --target: start a fake Clarifai API in this process, script it (UNAVAILABLE twice, a
throttled answer, a stream, a scope error) and run calls through the package, showing each one:
attempts, waits, final status, and what the server received (secrets redacted).

With --target: make read-only calls (MyScopes, ListModels) to that endpoint with the
credentials from CLARIFAI_PAT (with CLARIFAI_USER_ID, CLARIFAI_APP_ID), CLARIFAI_API_KEY or
CLARIFAI_SESSION_TOKEN, and show the same, with what was sent."""
_SCOPES_HELP = """\
Call MyScopes and print the scopes and endpoints a secret allows. The secret comes from
CLARIFAI_PAT (with CLARIFAI_USER_ID, CLARIFAI_APP_ID), CLARIFAI_API_KEY or
CLARIFAI_SESSION_TOKEN; or, with --pat / --api-key, from a prompt or stdin's first line (never
from argv). On an auth or scope failure it says which variable or flag held the secret (never
the secret) and what Clarifai answered. Default target: CLARIFAI_GRPC_BASE, else
api.clarifai.com:443."""
_FAKE_HELP = """\
Serve clarifai_interceptor.testing.FakeClarifai on 127.0.0.1 until Ctrl-C (or SIGTERM), so that
`scopes --insecure` and your own code can be tried without Clarifai. Every V2 method answers
SUCCESS; MyScopes answers the caller's scopes. It knows the demo's two fake secrets, which it
prints: a PAT with every scope (calls with it must name a user, as on Clarifai) and an API key
with Inputs_Get only; any other secret gets CONN_KEY_INVALID."""


def build_parser(
    run: Mapping[str, Callable[[argparse.Namespace], int]], hidden: frozenset[str] = frozenset()
) -> argparse.ArgumentParser:
    """The command line's parser; ``run`` maps each command to its function, ``hidden`` holds
    values typed for a secret flag (never echoed)."""
    # fmt: off
    common = _Parser(add_help=False)
    common.add_argument("--target", metavar="HOST[:PORT]", help="a Clarifai gRPC endpoint "
                        "(port 443 unless given)")
    common.add_argument("--insecure", action="store_true", help="plain TCP, not TLS (for local "
                        "servers such as clarifai_interceptor.testing.FakeClarifai)")
    common.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS",
                        help="give up on a call after this long, retries included (default 10)")
    raw = argparse.RawDescriptionHelpFormatter
    options: dict[str, Any] = {"formatter_class": raw, "epilog": _EPILOG}
    parser = _Parser(prog=_PROG, description="Authenticated, correctly scoped and resilient "
                     "gRPC calls to the Clarifai API.", **options)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", parents=[common], description=_DEMO_HELP, **options,
                               help="show retries, a stream and a scope error, on a fake Clarifai")
    demo.add_argument("--json", action="store_true", help="print one JSON document instead")
    demo.set_defaults(run=run["demo"])
    scopes = commands.add_parser("scopes", parents=[common], description=_SCOPES_HELP, **options,
                                 help="show what your Clarifai secret may do (MyScopes)")
    secret = scopes.add_mutually_exclusive_group()
    for kind, label in (("pat", "a PAT"), ("api_key", "an API key")):
        secret.add_argument("--" + kind.replace("_", "-"), dest="secret", action="store_const",
                            const=kind, help=f"use {label} read from a prompt or stdin, not the "
                            "environment (takes no value)")
    scopes.set_defaults(run=run["scopes"])
    fake = commands.add_parser("fake", description=_FAKE_HELP, **options,
                               help="run a fake Clarifai API on this machine until Ctrl-C")
    fake.add_argument("--port", type=_port, default=0, metavar="N", help="the port on "
                      "127.0.0.1 (default 0: a free one, printed)")
    fake.set_defaults(run=run["fake"])
    # fmt: on
    for each in (parser, common, demo, scopes, fake):
        each.hidden = hidden
    return parser
