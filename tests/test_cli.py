"""Tests of the command line (``clarifai_interceptor.__main__``): in-process via ``main()``, and
``python -m clarifai_interceptor`` in a subprocess. Every run against a fake has ``--timeout``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from clarifai_grpc.grpc.api import resources_pb2, service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2, status_pb2

from clarifai_interceptor.__main__ import DEMO_NARROW_KEY, DEMO_PAT, _parser, main
from clarifai_interceptor.testing import Delay, Fail, FakeClarifai, Outcome, Status

# Most cases here give a PAT without CLARIFAI_USER_ID (MyScopes needs no user_app_id).
pytestmark = pytest.mark.filterwarnings("ignore::clarifai_interceptor.NoUserIdWarning")

CLI_PAT = "fake-cli-pat"
TYPED = "fake-secret-typed-on-argv"  # a secret someone typed after --pat anyway
README = Path(__file__).resolve().parent.parent / "README.md"
UNKNOWN = "fake-unknown-secret"
SCOPES = ["Apps_Get", "Concepts_Get", "Models_Get", "Predict"]  # what PostModelOutputs needs
TIMEOUT = "5"  # seconds, for the CLI's own --timeout
CASES = ["unavailable burst", "throttled", "streaming", "scope error"]
CLARIFAI_VARS = (
    "CLARIFAI_PAT",
    "CLARIFAI_API_KEY",
    "CLARIFAI_SESSION_TOKEN",
    "CLARIFAI_USER_ID",
    "CLARIFAI_APP_ID",
    "CLARIFAI_GRPC_BASE",
    "CLARIFAI_API_BASE",
)


@pytest.fixture(autouse=True)
def _no_clarifai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CLARIFAI_* variable from the machine running the tests leaks into them."""
    for var in CLARIFAI_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def auth_fake() -> Iterator[FakeClarifai]:
    """A fake that knows one secret, `CLI_PAT`, with the scopes in `SCOPES`."""
    with FakeClarifai(secrets={CLI_PAT: SCOPES}) as fake:
        yield fake


def scopes(fake: FakeClarifai, *flags: str) -> int:
    return main(["scopes", "--target", fake.target, "--insecure", "--timeout", TIMEOUT, *flags])


def one_line(text: str) -> str:
    """The single line ``text`` holds: an error is one line, without a traceback."""
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (CLI_PAT, UNKNOWN, DEMO_PAT, DEMO_NARROW_KEY, TYPED):
            assert secret not in text


# -- demo ----------------------------------------------------------------------------------------


def test_demo_reports_each_case_as_it_goes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--timeout", TIMEOUT]) == 0
    out, err = capsys.readouterr()
    for number, name in enumerate(CASES, 1):
        assert f"[{number}/4] {name}:" in out
    assert out.count("as expected (") == 4
    assert "NOT AS EXPECTED" not in out
    assert out.count("got UNAVAILABLE; waiting") == 3  # two in the burst, one before the stream
    assert out.count("got CONN_THROTTLED; waiting") == 1
    assert "status CONN_INSUFFICIENT_SCOPES (Missing scopes: " in out
    assert "authorization: Key <redacted>" in out
    assert "user_app_id: demo-user/demo-app" in out
    assert out.rstrip().endswith("all 4 cases went as expected")
    assert err == ""
    no_secret(out, err)


def test_demo_json_is_one_document_with_the_scripted_attempts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--json", "--timeout", TIMEOUT]) == 0
    out, err = capsys.readouterr()
    no_secret(out, err)
    cases = {case["name"]: case for case in json.loads(out)}
    assert list(cases) == CASES
    assert {name: case["attempts"] for name, case in cases.items()} == {
        "unavailable burst": 3,
        "throttled": 2,
        "streaming": 2,
        "scope error": 1,
    }
    assert all(case["ok"] and case["grpc_code"] == "OK" for case in cases.values())
    assert [len(case["waits"]) for case in cases.values()] == [2, 1, 1, 0]
    assert all(0.1 <= wait <= 1.0 for case in cases.values() for wait in case["waits"])
    assert cases["streaming"]["messages"] == 3
    scope_error = cases["scope error"]
    assert scope_error["status"] == "CONN_INSUFFICIENT_SCOPES"
    assert "Predict" in scope_error["description"]
    assert scope_error["received"]["user_app_id"] is None  # an API key implies its app
    burst = cases["unavailable burst"]
    assert burst["method"] == "PostModelOutputs"
    assert burst["status"] == "SUCCESS"
    assert burst["received"]["user_app_id"] == {"user_id": "demo-user", "app_id": "demo-app"}
    for case in cases.values():
        metadata = case["received"]["metadata"]
        assert ["authorization", "Key <redacted>"] in metadata
        assert [key for key, _ in metadata].count("authorization") == 1


def test_demo_fails_when_a_case_does_not_go_as_scripted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Scripts ignored: every call succeeds at once, so the retry cases see 1 attempt, not 2 or 3.
    monkeypatch.setattr(FakeClarifai, "script", lambda *args: None)
    assert main(["demo", "--timeout", TIMEOUT]) == 1
    out = capsys.readouterr().out
    assert out.count("NOT AS EXPECTED") == 3
    assert "3 of 4 cases did not go as expected: unavailable burst, throttled, streaming" in out


def test_demo_against_a_target_makes_read_calls_with_env_credentials(
    auth_fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLARIFAI_PAT", CLI_PAT)
    monkeypatch.setenv("CLARIFAI_USER_ID", "cli-user")
    monkeypatch.setenv("CLARIFAI_APP_ID", "cli-app")
    auth_fake.script("ListModels", grpc.StatusCode.UNAVAILABLE)
    argv = ["demo", "--target", auth_fake.target, "--insecure", "--timeout", TIMEOUT, "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    no_secret(out, err)
    cases = json.loads(out)
    assert [(case["method"], case["attempts"], case["status"]) for case in cases] == [
        ("MyScopes", 1, "SUCCESS"),
        ("ListModels", 2, "SUCCESS"),
    ]
    assert len(cases[1]["waits"]) == 1
    sent = cases[1]["sent"]
    assert ["authorization", "Key <redacted>"] in sent["metadata"]
    assert sent["user_app_id"] == {"user_id": "cli-user", "app_id": "cli-app"}
    (call,) = auth_fake.calls_to("MyScopes")
    assert call.header("authorization") == f"Key {CLI_PAT}"
    listed: list[Any] = [call.request for call in auth_fake.calls_to("ListModels")]
    assert [request.per_page for request in listed] == [1, 1]
    assert {call.method for call in auth_fake.calls} == {"MyScopes", "ListModels"}


def test_demo_against_a_target_explains_a_refused_secret(
    auth_fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLARIFAI_API_KEY", UNKNOWN)
    assert main(["demo", "--target", auth_fake.target, "--insecure", "--timeout", TIMEOUT]) == 2
    out, err = capsys.readouterr()
    line = one_line(err)
    assert "API key from CLARIFAI_API_KEY" in line
    assert "CONN_KEY_INVALID" in line
    assert "2 of 2 cases did not go as expected" in out
    no_secret(out, err)


# -- scopes --------------------------------------------------------------------------------------


def test_scopes_prints_the_scopes_and_endpoints(
    auth_fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLARIFAI_PAT", CLI_PAT)
    monkeypatch.setenv("CLARIFAI_USER_ID", "cli-user")
    assert scopes(auth_fake) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert "PAT from CLARIFAI_PAT" in lines[0]
    assert "cli-user" in lines[0]
    assert lines[1] == f"scopes ({len(SCOPES)}):"
    assert lines[2 : 2 + len(SCOPES)] == [f"  {scope}" for scope in SCOPES]
    assert lines[2 + len(SCOPES)].startswith("endpoints (")
    assert "  PostModelOutputs" in lines
    assert "  PostInputs" not in lines  # needs Inputs_Add, which the secret lacks
    assert err == ""
    no_secret(out, err)
    (call,) = auth_fake.calls_to("MyScopes")
    assert call.header("authorization") == f"Key {CLI_PAT}"
    request: Any = call.request
    assert request.user_app_id.user_id == "cli-user"


@pytest.mark.parametrize(
    ("var", "label"), [("CLARIFAI_PAT", "PAT"), ("CLARIFAI_API_KEY", "API key")]
)
def test_scopes_explains_an_unknown_secret(
    var: str,
    label: str,
    auth_fake: FakeClarifai,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(var, UNKNOWN)
    assert scopes(auth_fake) == 2
    out, err = capsys.readouterr()
    line = one_line(err)
    assert f"{label} from {var}" in line
    assert "CONN_KEY_INVALID" in line
    assert "API key not found" in line  # what Clarifai (the fake) said
    assert out == ""
    no_secret(out, err)
    assert len(auth_fake.calls_to("MyScopes")) == 1  # auth errors are never retried


@pytest.mark.parametrize(
    ("outcome", "status", "said"),
    [
        (Status(status_code_pb2.CONN_INSUFFICIENT_SCOPES, "Missing scopes: X"), 2, "Missing"),
        (Fail(grpc.StatusCode.PERMISSION_DENIED, "no"), 2, "PERMISSION_DENIED"),
        (Fail(grpc.StatusCode.UNAUTHENTICATED, "who"), 2, "UNAUTHENTICATED"),
        (Fail(grpc.StatusCode.INTERNAL, "boom"), 1, "MyScopes failed: INTERNAL (boom)"),
        (Status(status_code_pb2.FAILURE, "eh"), 1, "MyScopes failed: FAILURE (eh)"),
    ],
)
def test_scopes_exit_status_follows_what_clarifai_said(
    outcome: Outcome,
    status: int,
    said: str,
    auth_fake: FakeClarifai,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLARIFAI_PAT", CLI_PAT)
    auth_fake.script("MyScopes", outcome)
    assert scopes(auth_fake) == status
    out, err = capsys.readouterr()
    line = one_line(err)
    assert said in line
    if status == 2:
        assert "Clarifai refused the PAT from CLARIFAI_PAT" in line
    assert out == ""


def test_scopes_pat_flag_reads_the_secret_from_stdin(
    auth_fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLARIFAI_API_KEY", UNKNOWN)  # the flag wins over the environment
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{CLI_PAT}\nsecond line ignored\n"))
    assert scopes(auth_fake, "--pat") == 0
    out, err = capsys.readouterr()
    assert "PAT from --pat (stdin)" in out
    assert "  Predict" in out.splitlines()
    no_secret(out, err)
    (call,) = auth_fake.calls
    assert call.header("authorization") == f"Key {CLI_PAT}"


def test_scopes_pat_flag_prompts_on_a_terminal(
    auth_fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    prompts: list[str] = []

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return CLI_PAT

    monkeypatch.setattr(sys, "stdin", Terminal("not read\n"))
    monkeypatch.setattr("getpass.getpass", getpass)
    assert scopes(auth_fake, "--pat") == 0
    out, err = capsys.readouterr()
    assert prompts == ["Clarifai PAT: "]
    assert "PAT from --pat (prompt)" in out
    no_secret(out, err)
    assert len(auth_fake.calls_to("MyScopes")) == 1


def test_ctrl_c_at_the_prompt_is_one_line(
    auth_fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(prompt: str) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", interrupted)
    assert scopes(auth_fake, "--api-key") == 1
    assert one_line(capsys.readouterr().err) == "clarifai-interceptor: error: interrupted"
    assert auth_fake.calls == []


def test_scopes_flag_explains_a_malformed_secret(
    auth_fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"Key {CLI_PAT}\n"))
    assert scopes(auth_fake, "--pat") == 2
    out, err = capsys.readouterr()
    line = one_line(err)
    assert line.startswith("clarifai-interceptor: error: --pat: ")
    assert "without 'Key '" in line
    no_secret(out, err)
    assert auth_fake.calls == []


def test_scopes_shows_the_app_of_an_api_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = service_pb2.MultiScopeResponse(
        status=status_pb2.Status(code=status_code_pb2.SUCCESS),
        app=resources_pb2.App(id="key-app", user_id="key-user"),
        scopes=["Inputs_Get"],
        endpoints=["GetInput", "ListInputs"],
    )
    monkeypatch.setenv("CLARIFAI_API_KEY", CLI_PAT)
    with FakeClarifai(secrets={CLI_PAT: ["Inputs_Get"]}) as fake:
        fake.script("MyScopes", answer)
        assert scopes(fake) == 0
        target = fake.target
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"MyScopes at {target} with the API key from CLARIFAI_API_KEY",
        "app: key-user/key-app",
        "scopes (1):",
        "  Inputs_Get",
        "endpoints (2):",
        "  GetInput",
        "  ListInputs",
    ]


def test_scopes_api_key_flag_names_itself_when_refused(
    auth_fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(UNKNOWN))
    assert scopes(auth_fake, "--api-key") == 2
    out, err = capsys.readouterr()
    line = one_line(err)
    assert "API key from --api-key (stdin)" in line
    assert "CONN_KEY_INVALID" in line
    no_secret(out, err)


def test_scopes_flag_with_nothing_on_stdin(
    auth_fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert scopes(auth_fake, "--pat") == 2
    assert "no PAT given" in one_line(capsys.readouterr().err)
    assert auth_fake.calls == []


def test_secret_flags_take_no_value_and_never_echo_one(
    auth_fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert scopes(auth_fake, "--pat", CLI_PAT) == 1
    out, err = capsys.readouterr()
    assert "unrecognized arguments" in err
    assert "Traceback" not in err
    no_secret(out, err)
    assert auth_fake.calls == []
    assert main([CLI_PAT]) == 1  # a secret pasted where the command goes
    out, err = capsys.readouterr()
    assert "unknown command: choose demo, scopes or fake" in err
    no_secret(out, err)


@pytest.mark.parametrize("command", ["scopes", "demo"])
def test_missing_credentials_is_one_line_naming_the_variables(
    command: str, auth_fake: FakeClarifai, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "--target", auth_fake.target, "--insecure", "--timeout", TIMEOUT]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    line = one_line(err)
    for var in ("CLARIFAI_PAT", "CLARIFAI_API_KEY", "CLARIFAI_SESSION_TOKEN"):
        assert var in line
    assert out == ""
    assert auth_fake.calls == []


def test_two_secrets_in_the_environment_is_a_credentials_error(
    auth_fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLARIFAI_PAT", CLI_PAT)
    monkeypatch.setenv("CLARIFAI_API_KEY", UNKNOWN)
    assert scopes(auth_fake) == 2
    out, err = capsys.readouterr()
    assert "CLARIFAI_PAT, CLARIFAI_API_KEY" in one_line(err)
    no_secret(out, err)


@pytest.mark.parametrize("command", ["scopes", "demo"])
@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (
            "http://x",
            "got 'http://x': 'http://' is not a scheme gRPC knows: give HOST[:PORT] alone",
        ),
        ("api.clarifai.com/v2", "got 'api.clarifai.com/v2': HOST[:PORT] has no path"),
        ("a b", "got 'a b': it holds whitespace or a control character"),
        ("localhost:abc", "the port must be a number from 1 to 65535, not 'abc'"),
    ],
)
def test_malformed_target_is_one_line_with_the_whole_reason(
    command: str,
    target: str,
    reason: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLARIFAI_PAT", CLI_PAT)
    assert main([command, "--target", target, "--timeout", "1"]) == 1
    out, err = capsys.readouterr()
    line = one_line(err)
    assert "target must be HOST or HOST:PORT" in line
    assert line.endswith(reason)  # the value given and why it is wrong, never cut
    assert out == ""


def test_a_huge_target_is_cut_but_not_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLARIFAI_PAT", CLI_PAT)
    assert main(["scopes", "--target", "x" * 10_000 + "/v2", "--timeout", "1"]) == 1
    line = one_line(capsys.readouterr().err)
    assert f"got {'x' * 200!r}...: HOST[:PORT] has no path" in line
    assert len(line) < 800


@pytest.mark.parametrize("command", ["scopes", "demo"])
def test_a_target_with_user_info_is_refused_without_echoing_it(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLARIFAI_PAT", CLI_PAT)
    target = f"fake-user:{TYPED}@api.example.test:443"
    assert main([command, "--target", target, "--timeout", "1"]) == 1
    out, err = capsys.readouterr()
    line = one_line(err)
    assert "got '***@api.example.test:443': it carries user info" in line
    assert "pass the secret as credentials" in line
    assert "fake-user" not in line
    no_secret(out, err)


@pytest.mark.parametrize("transport", [["--insecure"], []])  # plain TCP, and TLS
@pytest.mark.parametrize("command", ["scopes", "demo"])
def test_unreachable_target_is_one_line(
    command: str,
    transport: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLARIFAI_PAT", CLI_PAT)
    started = time.monotonic()
    assert main([command, "--target", "127.0.0.1:1", *transport, "--timeout", "1"]) == 1
    assert time.monotonic() - started < 5
    out, err = capsys.readouterr()
    line = one_line(err)
    assert "127.0.0.1:1" in line
    assert "UNAVAILABLE" in line or "DEADLINE_EXCEEDED" in line
    no_secret(out, err)


def test_a_silent_server_is_one_line_after_the_timeout(
    auth_fake: FakeClarifai, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLARIFAI_PAT", CLI_PAT)
    auth_fake.script("MyScopes", Delay(30, Status(status_code_pb2.SUCCESS)))
    started = time.monotonic()
    assert main(["scopes", "--target", auth_fake.target, "--insecure", "--timeout", "0.5"]) == 1
    assert time.monotonic() - started < 5
    line = one_line(capsys.readouterr().err)
    assert f"no answer from {auth_fake.target} within 0.5 s (DEADLINE_EXCEEDED)" in line


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nonsense"],
        ["scopes", "--timeout", "0"],
        ["scopes", "--pat", "--api-key"],
        ["fake", "--port", "65536"],
        ["fake", "--port", "x"],
    ],
)
def test_usage_errors_exit_1(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--help"], ["demo", "scopes", "exit status:", "  2  missing"]),
        (["demo", "--help"], ["--target", "--json", "--timeout", "exit status:"]),
        (["scopes", "--help"], ["--pat", "--api-key", "--insecure", "CLARIFAI_PAT", "  1  any"]),
        (["fake", "--help"], ["--port", "Ctrl-C", "scopes --insecure"]),
    ],
)
def test_help(argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    for word in words:
        assert word in out


# -- in a fresh interpreter ----------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("CLARIFAI_")}


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clarifai_interceptor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        check=False,
    )


def test_python_m_demo() -> None:
    done = run_module("demo")
    assert done.returncode == 0, done.stderr
    for number, name in enumerate(CASES, 1):
        assert f"[{number}/4] {name}:" in done.stdout
    assert "all 4 cases went as expected" in done.stdout
    no_secret(done.stdout, done.stderr)


def test_python_m_demo_into_a_pipe_closed_early() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "clarifai_interceptor", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    ) as demo:
        assert demo.stdout is not None
        assert demo.stderr is not None
        assert demo.stdout.readline().startswith("clarifai-interceptor demo:")
        demo.stdout.close()  # as `| head -1` does
        assert demo.wait(timeout=120) == 0  # the reader leaving is not a failure of the demo
        err = demo.stderr.read()
        assert "Traceback" not in err
        assert "BrokenPipeError" not in err


def test_python_m_help() -> None:
    done = run_module("--help")
    assert done.returncode == 0, done.stderr
    assert "usage: clarifai-interceptor" in done.stdout
    assert "exit status:" in done.stdout


# -- secrets typed on argv anyway ---------------------------------------------------------------


SPELLINGS = [
    [f"--pat={TYPED}"],
    [f"--api-key={TYPED}"],
    [f"--pa={TYPED}"],  # abbreviations argparse accepts
    [f"--api={TYPED}"],
    [f"--p={TYPED}"],
    [f"--a={TYPED}"],
    ["--pat", TYPED],
    ["--pa", TYPED],
    ["--api-key", TYPED],
    ["--pat", f"--target={TYPED}"],  # not a secret flag, but the value looks like one: shown
]


@pytest.mark.parametrize("spelling", SPELLINGS[:-1], ids=" ".join)
@pytest.mark.parametrize("where", ["scopes", "top level", "demo"])
def test_a_value_typed_for_a_secret_flag_is_never_echoed(
    spelling: list[str],
    where: str,
    auth_fake: FakeClarifai,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{CLI_PAT}\n"))
    rest = ["--target", auth_fake.target, "--insecure", "--timeout", TIMEOUT]
    argv = {
        "scopes": ["scopes", *spelling, *rest],
        "top level": [*spelling, "scopes", *rest],
        "demo": ["demo", *spelling, *rest],
    }[where]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    no_secret(out, err)
    assert "error:" in err
    # The message says what to do instead (at the top level the value reads as the command).
    assert "take no value" in err or (where == "top level" and "unknown command" in err)
    assert auth_fake.calls == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["scopes", f"--timeout={TYPED}"], "argument --timeout: must be a positive number"),
        (["scopes", "--timeout", TYPED], "argument --timeout: must be a positive number"),
        (["demo", f"--timeout={TYPED}"], "argument --timeout: must be a positive number"),
        (["fake", f"--port={TYPED}"], "argument --port: must be a TCP port from 0 to 65535"),
        (["fake", f"--po={TYPED}"], "argument --port: must be a TCP port from 0 to 65535"),
        (["scopes", f"--t={TYPED}"], "ambiguous option: --t could match --target, --timeout"),
    ],
)
def test_a_bad_option_value_is_never_echoed(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A secret pasted where an option's value goes (`--timeout=<PAT>`) must not be printed:
    # the message names the option and what it expects, not the value.
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert expected in err
    no_secret(out, err)


# -- synopsis, demo header, broken pipes, fake ---------------------------------------------------


def readme_synopsis() -> dict[str, str]:
    """The README's command-line synopsis: command -> its line."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Command line", 1)[1]
    block = section.split("```", 2)[1]
    lines = [line for line in block.splitlines() if line.startswith("clarifai-interceptor ")]
    return {line.split()[1]: line for line in lines}


def test_readme_synopsis_lists_every_command_and_option() -> None:
    commands = _parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    synopsis = readme_synopsis()
    assert sorted(synopsis) == sorted(commands)
    for name, command in commands.items():
        options = {
            option
            for action in command._actions
            for option in action.option_strings
            if option.startswith("--") and option != "--help"
        }
        listed = set(re.findall(r"--[a-z][a-z-]*", synopsis[name]))
        assert listed == options, name


def test_demo_header_says_jitter_only_shortens_waits(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--timeout", TIMEOUT]) == 0
    header = capsys.readouterr().out.splitlines()[1]
    assert "each shortened by up to 20% (jitter)" in header
    assert "+/-" not in header


def closed_stdout(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI with its stdout a pipe closed before anything is written: `| head -0`."""
    read, write = os.pipe()
    os.close(read)  # every write to stdout now fails with EPIPE, deterministically
    try:
        done = subprocess.run(
            [sys.executable, "-m", "clarifai_interceptor", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=env or clean_env(),
            check=False,
        )
    finally:
        os.close(write)
    return done.returncode, done.stderr


def test_scopes_into_a_closed_pipe_exits_as_the_call_went(auth_fake: FakeClarifai) -> None:
    env = {**clean_env(), "CLARIFAI_API_KEY": CLI_PAT}
    argv = ["scopes", "--insecure", "--target", auth_fake.target, "--timeout", TIMEOUT]
    status, err = closed_stdout(*argv, env=env)
    assert (status, err) == (0, "")
    assert len(auth_fake.calls_to("MyScopes")) == 1
    refused = {**clean_env(), "CLARIFAI_API_KEY": UNKNOWN}
    status, err = closed_stdout(*argv, env=refused)
    assert status == 2  # a failure is still one, with its line on stderr
    assert "CONN_KEY_INVALID" in one_line(err)


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["demo"], ["demo", "--json"]])
def test_other_output_into_a_closed_pipe_is_quiet(argv: list[str]) -> None:
    assert closed_stdout(*argv) == (0, "")


# The child restores Python's own SIGINT handler before it runs the CLI: a shell starts a
# background job (`pytest ... &`) with SIGINT ignored, which its children inherit, and Python
# installs its KeyboardInterrupt handler only where SIGINT is not ignored.
RESTORE_SIGINT = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('clarifai_interceptor', run_name='__main__', alter_sys=True)"
)
WAIT = 60  # seconds: the most any read from, or wait for, a CLI child takes


class Child:
    """``python -m clarifai_interceptor ARGS`` as a child process whose every wait is bounded:
    its stdout is read by a thread, and a child that does not stop when told is killed."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", RESTORE_SIGINT, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)  # end of output

    def readline(self) -> str:
        """The next line of stdout ("" at its end); fails after `WAIT` seconds without one."""
        try:
            line = self._lines.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no line from the CLI child within {WAIT} s")
        if line is None:
            self._lines.put(None)
            return ""
        return line

    def rest(self) -> str:
        """The rest of stdout, once the child has ended."""
        return "".join(iter(self.readline, ""))

    def stop(self, signum: int) -> int:
        """Send ``signum`` and return the exit status; fails if the child has not ended within
        `WAIT` seconds (it is killed when the test ends)."""
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the CLI child did not stop within {WAIT} s of signal {signum}")

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def close(self) -> None:
        """Kill the child if it still runs, reap it, close its pipes: never a wait unbounded."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=WAIT)
        self._reader.join(timeout=WAIT)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def cli_child(*args: str) -> Iterator[Child]:
    child = Child(*args)
    try:
        yield child
    finally:
        child.close()


def test_fake_serves_until_interrupted_and_scopes_can_try_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with cli_child("fake", "--port", "0") as fake:
        first = fake.readline()
        found = re.search(r"on (127\.0\.0\.1:\d+) \(plain TCP\); Ctrl-C stops it", first)
        assert found, first
        target = found.group(1)
        printed = "".join(fake.readline() for _ in range(4))
        assert f"scopes --insecure --target {target}" in printed
        argv = ["scopes", "--insecure", "--target", target, "--timeout", TIMEOUT]
        monkeypatch.setenv("CLARIFAI_API_KEY", DEMO_NARROW_KEY)
        assert main(argv) == 0
        assert "scopes (1):\n  Inputs_Get\n" in capsys.readouterr().out
        monkeypatch.delenv("CLARIFAI_API_KEY")
        monkeypatch.setenv("CLARIFAI_PAT", DEMO_PAT)
        assert main(argv) == 2  # a PAT must name its user, as on Clarifai
        assert "CONN_INVALID_REQUEST" in one_line(capsys.readouterr().err)
        monkeypatch.setenv("CLARIFAI_USER_ID", "me")
        assert main(argv) == 0
        assert "acting on me/*" in capsys.readouterr().out
        assert fake.stop(signal.SIGINT) == 0  # Ctrl-C
        assert "stopped after 3 calls" in fake.rest()
        assert fake.stderr() == ""


def test_fake_stops_on_sigterm_too() -> None:
    with cli_child("fake") as fake:
        assert "Ctrl-C stops it" in fake.readline()
        assert fake.stop(signal.SIGTERM) == 0
        assert "stopped after 0 calls" in fake.rest()
