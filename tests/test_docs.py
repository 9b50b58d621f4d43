"""The package's documentation, as a reader meets it.

* ``help(clarifai_interceptor)`` starts with a real guide.
* Every ```python block of ``docs/pages/*.md`` runs as pasted into a file, against FakeClarifai
  (the runner and its environment are ``tests/test_readme.py``'s).
* The site (``mkdocs build --strict``, built once here) documents every public name: each name
  in the ``__all__`` of every public module, and the pytest plugin's fixtures, has its heading in
  the API reference; no internal link (``href``/``src``, anchors included) is broken.
* Its pages load in a headless Chromium (Debian's ``chromium``, or ``CHROMIUM``) with no script
  error and their content present, and its search answers a query with the right page. Without
  mkdocs (the docs extra; CI's floor job) the site tests skip; without Chromium they fail: CI
  installs it (``.ci/run``), and the README's test command does too.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import html.parser
import http.server
import importlib
import importlib.util
import json
import os
import pkgutil
import pydoc
import re
import select
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_readme import PAGES, ROOT, Block, block_param, blocks, check_block
from test_readme import server as server  # noqa: PLC0414 (the fixture, shared)

import clarifai_interceptor

ENTRY_POINTS = [
    "secure_channel",
    "insecure_channel",
    "wrap_channel",
    "ClarifaiInterceptor",
    "clarifai_interceptor.aio",
    "Credentials",
    "RetryPolicy",
    "use_credentials",
    "use_retry",
    "FakeClarifai",
]


def test_package_docstring_says_what_it_is_names_entry_points_and_shows_an_example() -> None:
    doc = clarifai_interceptor.__doc__ or ""
    summary, _, body = doc.partition("\n\n")
    assert summary.startswith("Authenticated, correctly scoped and resilient gRPC calls")
    for name in ENTRY_POINTS:
        assert name in body, name
    assert "Example:" in body
    assert "secure_channel(credentials=creds)" in body
    assert "StatusCode.Name(code)" in body  # how to read the integer status codes


def test_help_opens_with_the_guide() -> None:
    text = pydoc.render_doc(clarifai_interceptor, renderer=pydoc.plaintext)
    head = "\n".join(text.splitlines()[:40])
    assert "Main entry points:" in head


# -- the pages' code blocks -----------------------------------------------------------------------

PAGE_BLOCKS = [
    (path.name, block)
    for path in sorted(PAGES.glob("*.md"))
    for block in blocks(path.read_text(encoding="utf-8"))
]


def test_the_pages_have_python_blocks() -> None:
    assert {name for name, _ in PAGE_BLOCKS} >= {"channels.md", "aio.md", "testing.md"}


@pytest.mark.parametrize(("name", "block"), [block_param(name, b) for name, b in PAGE_BLOCKS])
def test_docs_block_runs(name: str, block: Block, server: dict[str, str], tmp_path: Path) -> None:
    check_block(name, block, server, tmp_path)


# -- the built site --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as .ci/run builds it (warnings are errors)."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (the docs extra)")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
    command += ["-f", str(ROOT / "docs" / "mkdocs.yml"), "--site-dir", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


class _Page(html.parser.HTMLParser):
    """The ids, the links and the ``<h1>`` of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.h1: list[str] = []
        self._in_h1 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        for name in ("href", "src"):
            if found.get(name):
                self.links.append(str(found[name]))
        self._in_h1 = self._in_h1 or tag == "h1"

    def handle_endtag(self, tag: str) -> None:
        if tag == "h1":
            self._in_h1 = False

    def handle_data(self, data: str) -> None:
        if self._in_h1:
            self.h1.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def public_modules() -> list[str]:
    """The package and each submodule whose name does not start with an underscore."""
    found = pkgutil.iter_modules(clarifai_interceptor.__path__)
    submodules = [f"clarifai_interceptor.{m.name}" for m in found if not m.name.startswith("_")]
    return ["clarifai_interceptor", *submodules]


def public_names(module_name: str) -> list[str]:
    """``__all__``; for a module without one (the pytest plugin), its public functions."""
    if module_name == "clarifai_interceptor.sdk" and importlib.util.find_spec("clarifai") is None:
        pytest.skip("the Clarifai SDK is not installed (sdk extra)")
    module = importlib.import_module(module_name)
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith(("_", "pytest_"))
        and callable(value)
        and getattr(value, "__module__", None) == module_name
    ]


def test_every_public_module_is_one_the_reference_covers() -> None:
    # A new public module must be added to the reference (and so to this list): see below.
    assert public_modules() == [
        "clarifai_interceptor",
        "clarifai_interceptor.aio",
        "clarifai_interceptor.exceptions",
        "clarifai_interceptor.instrumentation",
        "clarifai_interceptor.pytest_plugin",
        "clarifai_interceptor.redis",
        "clarifai_interceptor.sdk",
        "clarifai_interceptor.testing",
    ]


@pytest.mark.parametrize("module_name", public_modules())
def test_the_reference_documents_every_public_name(site: Path, module_name: str) -> None:
    ids: set[str] = set()
    for path in site.rglob("*.html"):
        ids |= parse(path).ids
    names = public_names(module_name)
    assert names
    missing = [name for name in names if f"{module_name}.{name}" not in ids]
    assert not missing, f"{module_name}: no heading in the API reference for {missing}"


def test_no_internal_link_is_broken(site: Path) -> None:
    pages = {path: parse(path) for path in site.rglob("*.html")}
    assert len(pages) >= 15
    broken = []
    for path, page in pages.items():
        for link in page.links:
            parts = urllib.parse.urlsplit(link)
            if parts.scheme or link.startswith("//"):
                continue  # external: not ours to check
            if not parts.path:
                target = path
            elif parts.path.startswith("/"):  # the 404 page's links start at the site's root
                target = site / parts.path.lstrip("/")
            else:
                target = (path.parent / parts.path).resolve()
            if target.is_dir():
                target /= "index.html"
            if not target.is_file():
                broken.append(f"{path.relative_to(site)}: {link}")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse(target).ids
                if urllib.parse.unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(site)}: {link} (no such anchor)")
    assert not broken, "\n".join(broken)


def test_the_search_index_holds_every_page(site: Path) -> None:
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    located = {doc["location"].split("#")[0] for doc in index["docs"]}
    for path in PAGES.glob("*.md"):
        assert ("" if path.stem == "index" else f"{path.stem}/") in located, path.name
    assert (site / "search" / "main.js").is_file()
    assert (site / "search" / "worker.js").is_file()


# -- the site in Chromium --------------------------------------------------------------------------


def chromium() -> str:
    """Chromium's path: ``CHROMIUM``, else ``chromium`` on PATH; none fails the test."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail(
            "no chromium: the site's tests load it in a headless Chromium. Install Debian's "
            "package (apt-get install -y chromium; .ci/run does), or set CHROMIUM to a binary."
        )
    return found


class Browser:
    """A headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, binary: str, profile: Path) -> None:
        # The child's fd 3 reads our commands, its fd 4 writes the answers: copies of the pipe
        # ends above the low numbers, moved into place in the child.
        ours_r, theirs_w = os.pipe()
        theirs_r, ours_w = os.pipe()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (theirs_r, theirs_w)]
        for fd in (theirs_r, theirs_w):
            os.close(fd)

        def into_place() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
        command += [f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=into_place,  # noqa: PLW1509 (no threads of ours run meanwhile)
        )
        for fd in high:
            os.close(fd)
        self._write, self._read = ours_w, ours_r
        self._buffer = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise EOFError("chromium exited")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command; its result (events that come meanwhile are kept in `events`)."""
        self._next += 1
        command: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            command["sessionId"] = session
        os.write(self._write, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            message = self._message(deadline)
            if message.get("id") == self._next:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, session: str, timeout: float = 60) -> None:
        """Until the event ``method`` of ``session`` has come."""
        deadline = time.monotonic() + timeout
        while not any(
            e.get("method") == method and e.get("sessionId") == session for e in self.events
        ):
            self.events.append(self._message(deadline))

    def open(self) -> str:
        """A new tab, with the page, runtime and log events on; its session."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session)
        return session

    def load(self, session: str, url: str) -> list[str]:
        """Load ``url`` in the tab; the script errors it raised while loading."""
        self.events.clear()
        self.send("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired", session)
        return self.errors(session)

    def errors(self, session: str) -> list[str]:
        found = []
        for event in self.events:
            if event.get("sessionId") != session:
                continue
            if event["method"] == "Runtime.exceptionThrown":
                details = event["params"]["exceptionDetails"]
                found.append(str(details.get("exception", {}).get("description", details)))
            elif (
                event["method"] == "Log.entryAdded" and event["params"]["entry"]["level"] == "error"
            ):
                found.append(event["params"]["entry"]["text"])
        return found

    def evaluate(self, session: str, expression: str) -> Any:
        answer = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True)
        return answer["result"].get("value")

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, TimeoutError, RuntimeError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._write)
        os.close(self._read)


@pytest.fixture(scope="module")
def browser(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    opened = Browser(chromium(), tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The site over HTTP on localhost (search runs in a web worker, which file:// forbids)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()
            thread.join()


def page_title(path: Path) -> str:
    """A page's title: its first line, a Markdown heading."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# "), path
    return first[2:].strip()


def sections(path: Path) -> list[str]:
    """The text of a page's ``##`` headings (outside code blocks), as a reader sees them."""
    prose = re.sub(r"^```.*?^```$", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    found = re.findall(r"^## (.+?)(?: \{ #[a-z-]+ \})?$", prose, flags=re.M)
    return [heading.replace("`", "") for heading in found]


def test_every_page_loads_in_chromium_with_its_content(served: str, browser: Browser) -> None:
    # Over HTTP, as from a web server: from file:// Chromium refuses the search's web worker
    # (mkdocs's search needs a server; the pages themselves read the same).
    session = browser.open()
    for path in sorted(PAGES.glob("*.md")):
        errors = browser.load(
            session, f"{served}/{'' if path.stem == 'index' else path.stem + '/'}"
        )
        assert not errors, f"{path.name}: {errors}"
        heading = browser.evaluate(session, "document.querySelector('[role=main] h1').innerText")
        assert heading.rstrip("¶").strip() == page_title(path), path.name
        text = browser.evaluate(session, "document.querySelector('[role=main]').innerText")
        for section in sections(path):
            assert section in text, (path.name, section)
    # A reference page shows the docstrings mkdocstrings rendered.
    browser.load(session, f"{served}/rate-limits/")
    assert browser.evaluate(
        session, "!!document.getElementById('clarifai_interceptor.redis.RedisStore')"
    )


def test_the_search_finds_a_page(served: str, browser: Browser) -> None:
    session = browser.open()
    errors = browser.load(session, f"{served}/index.html?q=pytest-grpc")
    assert not errors, errors
    # The worker fetches the index and builds it; the page then shows the query's results.
    found: list[str] = []
    deadline = time.monotonic() + 60
    while not found and time.monotonic() < deadline:
        found = browser.evaluate(
            session,
            "Array.from(document.querySelectorAll('#mkdocs-search-results article a'),"
            " a => a.getAttribute('href'))",
        )
        time.sleep(0.2)
    assert any("testing/" in href for href in found), found
    assert not browser.errors(session)
