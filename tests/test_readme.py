"""README.md as a reader meets it: its two opening commands, its length and links, and every
```python block run as pasted into a file, against FakeClarifai, so that none can rot.

Each block runs alone, in a fresh interpreter (``python tests/test_readme.py BLOCK``), as the
file a reader would paste it into: ``__name__`` is ``"__main__"``, nothing is imported or
defined for it, and top-level ``await`` is a syntax error (an asyncio example ends with
``asyncio.run(main())``). What the test supplies is the environment, as a reader's shell would:
``CLARIFAI_GRPC_BASE`` names a TLS `FakeClarifai` on ``localhost`` (so ``secure_channel()``
and ``ClarifaiChannel.get_grpc_channel()`` reach it), gRPC's ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``
makes gRPC trust the fake's test CA, and ``CLARIFAI_PAT`` / ``CLARIFAI_USER_ID`` /
``CLARIFAI_APP_ID`` hold fake credentials.

After a block, each ``test_*`` function it defined is called, as pytest would with the
package's plugin (fixtures ``clarifai_fake``: a started `FakeClarifai`, and
``clarifai_testing``: `set_testing`, on for the test). A block that imports pytest is a test
module of its own (its own fixtures, pytest-grpc's, the package's plugin): it runs under pytest
instead, with every warning an error as in this suite. New blocks are found by the fence alone:
nothing here names a block. ``tests/test_docs.py`` runs the blocks of ``docs/pages/`` the same
way, with the helpers here.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = ROOT / "docs" / "pages"
PAT = "fake-readme-pat"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
#: The most lines README.md may have (issue 19): the rest of the guide lives in docs/.
MAX_LINES = 200


class Block(NamedTuple):
    line: int  # of the opening fence, 1-based
    source: str


def blocks(text: str) -> list[Block]:
    return [Block(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(text)]


README_TEXT = README.read_text(encoding="utf-8")
BLOCKS = blocks(README_TEXT)


def test_the_readme_has_python_blocks_and_the_fence_finder_finds_them() -> None:
    assert len(BLOCKS) >= 5  # the quick starts: SDK, channel, interceptor, asyncio, testing
    sample = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\nc = 3\n```\n"
    assert blocks(sample) == [Block(2, "a = 1\n"), Block(8, "b = 2\nc = 3\n")]


# -- the README's shape ----------------------------------------------------------------------------


def test_the_readme_opens_with_exactly_two_commands_the_demo_and_the_tests() -> None:
    title, blank, fence, *rest = README_TEXT.splitlines()
    assert (title, blank, fence) == ("# clarifai-interceptor", "", "```bash")
    demo, tests, end = rest[:3]
    assert end == "```"
    assert demo == "pip install . && clarifai-interceptor demo"
    # The test command installs what the suite needs on a fresh machine: redis-server (the Redis
    # store's tests) and chromium (the built site's tests), the extras, then runs pytest as
    # .ci/run does.
    assert tests.endswith(" && python -m pytest")
    assert "apt-get install -y redis-server chromium" in tests
    extras = re.search(r"pip install -e '\.\[([a-z,]+)\]'", tests)
    assert extras is not None
    assert {"test", "docs", "sdk", "redis"} <= set(extras.group(1).split(","))


def test_ci_runs_the_readmes_test_command_with_what_it_installs() -> None:
    ci = ROOT / ".ci" / "run"
    if not ci.is_file():
        pytest.skip("no .ci/run (a source distribution)")
    text = ci.read_text(encoding="utf-8")
    assert "python -m pytest" in text
    assert "command -v chromium" in text
    assert "command -v redis-server" in text


def test_the_readme_is_short_and_links_every_docs_page() -> None:
    assert README_TEXT.count("\n") <= MAX_LINES
    linked = set(re.findall(r"\]\(docs/pages/([a-z-]+\.md)(?:#[a-z0-9-]+)?\)", README_TEXT))
    pages = {path.name for path in PAGES.glob("*.md")}
    assert linked == pages  # a line per page, and no link to a page that is gone


def test_the_readme_says_how_to_aim_secure_channel_at_a_local_server() -> None:
    quick_start = README_TEXT.split("## Quick start: a channel for your service", 1)[1]
    assert "CLARIFAI_GRPC_BASE" in quick_start.split("\n## ", 1)[0]


# -- running the blocks ---------------------------------------------------------------------------


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


def block_param(name: str, block: Block) -> Any:
    """The pytest parameter of ``block`` of the file ``name``.

    Blocks that use the Clarifai SDK are marked: CI's floor job has no SDK (its range needs a
    newer clarifai-grpc than the floor) and deselects them with -m "not sdk".
    """
    marks = [pytest.mark.sdk] if "clarifai_interceptor.sdk" in block.source else []
    return pytest.param(name, block, id=f"{name}:{block.line}", marks=marks)


def check_block(name: str, block: Block, env: dict[str, str], tmp_path: Path) -> None:
    """Run ``block`` of the file ``name`` as the module docstring says; fail with its error."""
    path = tmp_path / f"{Path(name).stem.replace('-', '_')}_line{block.line}.py"
    path.write_text(block.source, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, __file__, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, (
        f"{name} block at line {block.line} failed:\n{block.source}\n{done.stderr[-4000:]}"
    )
    assert PAT not in done.stdout + done.stderr


@pytest.mark.parametrize(("name", "block"), [block_param("README.md", block) for block in BLOCKS])
def test_readme_block_runs(name: str, block: Block, server: dict[str, str], tmp_path: Path) -> None:
    check_block(name, block, server, tmp_path)


# -- the runner, in the block's own interpreter ---------------------------------------------------


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
    """Run one block as the module docstring says."""
    source = Path(path).read_text(encoding="utf-8")
    if PYTEST_MODULE.search(source):
        # No config file is found from the block's temporary directory: -W error stands in for
        # this suite's `filterwarnings = error`; plugins load by entry point, as for a reader,
        # but pytest-asyncio, whose unset loop scope would warn (no block here is async).
        args = [path, "-q", "-p", "no:cacheprovider", "-p", "no:asyncio", "-W", "error"]
        raise SystemExit(pytest.main([*args, "--rootdir", str(Path(path).parent)]))
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": path}
    exec(compile(source, path, "exec"), namespace)  # noqa: S102 (the docs' own code, on purpose)
    _run_tests(namespace)


if __name__ == "__main__":
    run_block(sys.argv[1])
