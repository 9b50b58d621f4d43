"""Every ```python block of README.md runs, against FakeClarifai, so that none can rot.

Each block runs alone, in a fresh interpreter (``python tests/test_readme.py BLOCK``), as a
reader who copies it would run it: it must import what it uses. What the test supplies, and
nothing else:

* the environment: ``CLARIFAI_GRPC_BASE`` names a TLS `FakeClarifai` on ``localhost`` (so
  ``secure_channel()`` and ``ClarifaiChannel.get_grpc_channel()`` reach it), gRPC's
  ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` makes gRPC trust the fake's test CA, and
  ``CLARIFAI_PAT`` / ``CLARIFAI_USER_ID`` / ``CLARIFAI_APP_ID`` hold fake credentials;
* the names the README's prose assumes (`GIVEN`): ``creds``, ``other_creds``, ``request``,
  ``stub`` (a ``V2Stub`` through ``secure_channel(credentials=creds)``) and ``my_service``
  (the reader's own code: one ``PostModelOutputs`` through ``insecure_channel``).

A block with top-level ``await`` runs in ``asyncio.run``. After a block, each ``test_*``
function it defined is called (fixtures ``clarifai_fake``: a started `FakeClarifai`, and
``clarifai_testing``: `set_testing`, on for the test). A block that imports pytest is a test
module of its own (its own fixtures, pytest-grpc's, the package's plugin): it runs under pytest
instead, with every warning an error as in this suite, and gets none of the names above. New
blocks are found by the fence alone: nothing here names a block.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
PAT = "fake-readme-pat"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
GIVEN = ("creds", "other_creds", "request", "stub", "my_service")


class Block(NamedTuple):
    line: int  # of the opening fence, 1-based
    source: str


def blocks(text: str) -> list[Block]:
    return [Block(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(text)]


BLOCKS = blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks_and_the_fence_finder_finds_them() -> None:
    assert len(BLOCKS) >= 4
    sample = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\nc = 3\n```\n"
    assert blocks(sample) == [Block(2, "a = 1\n"), Block(8, "b = 2\nc = 3\n")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A TLS fake on localhost, and the environment that points a block at it."""
    trustme = pytest.importorskip("trustme")
    from clarifai_interceptor.testing import FakeClarifai  # noqa: PLC0415

    authority = trustme.CA()
    cert = authority.issue_cert("localhost")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    roots = tmp_path_factory.mktemp("ca") / "ca.pem"
    roots.write_bytes(authority.cert_pem.bytes())
    with FakeClarifai(tls=(cert.private_key_pem.bytes(), chain)) as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLARIFAI_", "GRPC_"))}
        env |= {
            "CLARIFAI_GRPC_BASE": "localhost:" + fake.target.rsplit(":", 1)[1],
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(roots),
            "CLARIFAI_PAT": PAT,
            "CLARIFAI_USER_ID": "me",
            "CLARIFAI_APP_ID": "my-app",
        }
        yield env


def _param(block: Block) -> Any:
    # Blocks that use the Clarifai SDK are marked: CI's floor job has no SDK (its range needs a
    # newer clarifai-grpc than the floor) and deselects them with -m "not sdk".
    marks = [pytest.mark.sdk] if "clarifai_interceptor.sdk" in block.source else []
    return pytest.param(block, id=f"line{block.line}", marks=marks)


@pytest.mark.parametrize("block", [_param(block) for block in BLOCKS])
def test_readme_block_runs(
    block: Block, server: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / f"readme_line{block.line}.py"
    path.write_text(block.source, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, __file__, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=server,
        check=False,
    )
    assert done.returncode == 0, (
        f"README.md block at line {block.line} failed:\n{block.source}\n{done.stderr[-4000:]}"
    )
    assert PAT not in done.stdout + done.stderr


# -- the runner, in the block's own interpreter ---------------------------------------------------


def _given() -> dict[str, Any]:
    from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc  # noqa: PLC0415

    import clarifai_interceptor as ci  # noqa: PLC0415

    creds = ci.Credentials.from_pat(PAT, user_id="me", app_id="my-app")
    request = service_pb2.PostModelOutputsRequest(model_id="general")

    def my_service(target: str) -> None:
        with ci.insecure_channel(target, creds) as channel:
            service_pb2_grpc.V2Stub(channel).PostModelOutputs(request, timeout=10)

    return {
        "creds": creds,
        "other_creds": ci.Credentials.from_api_key("fake-readme-other-key"),
        "request": request,
        "stub": service_pb2_grpc.V2Stub(ci.secure_channel(credentials=creds)),
        "my_service": my_service,
    }


def _run_tests(namespace: dict[str, Any]) -> None:
    from clarifai_interceptor.testing import FakeClarifai, set_testing  # noqa: PLC0415

    for name, test in list(namespace.items()):
        if not (name.startswith("test_") and inspect.isfunction(test)):
            continue
        params = list(inspect.signature(test).parameters)
        unknown = set(params) - {"clarifai_fake", "clarifai_testing"}
        if unknown:
            raise SystemExit(f"{name} asks for fixtures the README runner lacks: {unknown}")
        # The package's two fixtures, as its pytest plugin gives them.
        with FakeClarifai() as fake, set_testing(True):
            given = {"clarifai_fake": fake, "clarifai_testing": set_testing}
            test(*[given[param] for param in params])


#: A block importing pytest is a whole test module: pytest runs it.
PYTEST_MODULE = re.compile(r"^import pytest$", re.MULTILINE)


def run_block(path: str) -> None:
    """Run one README block as the module docstring says."""
    source = Path(path).read_text(encoding="utf-8")
    if PYTEST_MODULE.search(source):
        # No config file is found from the block's temporary directory: -W error stands in for
        # this suite's `filterwarnings = error`; plugins load by entry point, as for a reader,
        # but pytest-asyncio, whose unset loop scope would warn (no block here is async).
        args = [path, "-q", "-p", "no:cacheprovider", "-p", "no:asyncio", "-W", "error"]
        raise SystemExit(pytest.main([*args, "--rootdir", str(Path(path).parent)]))
    namespace: dict[str, Any] = {"__name__": "__readme__", **_given()}
    code = compile(source, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:
        asyncio.run(eval(code, namespace))  # noqa: S307 (the README's own code, on purpose)
    else:
        exec(code, namespace)  # noqa: S102 (the README's own code, on purpose)
    _run_tests(namespace)


if __name__ == "__main__":
    run_block(sys.argv[1])
