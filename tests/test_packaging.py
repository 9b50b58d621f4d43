"""The distributions: ``python -m build`` makes an sdist and a wheel, checked file by file.

The sdist must be able to run its own test suite (conftest, the secrets guard, the benchmarks the
tests import), and carry the licence and the docs sources; the wheel holds only the package and
its licence. ``twine check --strict`` must pass on both. One build per session (~15 to 30 s).
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import clarifai_interceptor

ROOT = Path(__file__).resolve().parent.parent
NAME = "clarifai_interceptor"
VERSION = clarifai_interceptor.__version__
APACHE_FIRST_LINES = ["Apache License", "Version 2.0, January 2004"]


def sources(folder: str, pattern: str) -> set[str]:
    """Files of the source tree under ``folder`` (relative paths), caches left out."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / folder).rglob(pattern)
        if "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def sdist_files(dist: Path) -> set[str]:
    (sdist,) = dist.glob("*.tar.gz")
    assert sdist.name == f"{NAME}-{VERSION}.tar.gz"
    prefix = f"{NAME}-{VERSION}/"
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert all(name == prefix.rstrip("/") or name.startswith(prefix) for name in names)
    return {name.removeprefix(prefix) for name in names if name.startswith(prefix)}


@pytest.fixture(scope="module")
def wheel(dist: Path) -> zipfile.ZipFile:
    (path,) = dist.glob("*.whl")
    assert path.name == f"{NAME}-{VERSION}-py3-none-any.whl"
    return zipfile.ZipFile(path)


@pytest.fixture(scope="module")
def metadata(wheel: zipfile.ZipFile) -> dict[str, list[str]]:
    text = wheel.read(f"{NAME}-{VERSION}.dist-info/METADATA").decode("utf-8")
    message = Parser().parsestr(text)
    return {key: message.get_all(key) or [] for key in set(message.keys())}


def test_sdist_can_run_its_own_test_suite(sdist_files: set[str]) -> None:
    needed = {"tests/conftest.py", "tests/secrets_guard.py", "setup.cfg", "pyproject.toml"}
    needed |= sources("tests", "*.py") | sources("benchmarks", "*.py")  # tests import benchmarks
    assert needed <= sdist_files, sorted(needed - sdist_files)


def test_sdist_carries_licence_docs_and_changelog(sdist_files: set[str]) -> None:
    needed = {"LICENSE", "README.md", "CHANGELOG.md", f"{NAME}/py.typed"}
    needed |= {"docs/mkdocs.yml", "docs/hooks.py"} | sources("docs/pages", "*.md")
    needed |= sources(NAME, "*.py")
    assert needed <= sdist_files, sorted(needed - sdist_files)
    assert not [name for name in sdist_files if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in sdist_files if name.startswith(("docs/site", "benchmarks/res"))]


def test_wheel_holds_the_package_and_its_licence_only(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    package = {name for name in names if name.startswith(f"{NAME}/")}
    # The Redis store's Lua script is package data: RedisStore loads it from the package.
    assert package == sources(NAME, "*.py") | {f"{NAME}/py.typed"}
    info = f"{NAME}-{VERSION}.dist-info/"
    assert names - package == {
        info + "METADATA",
        info + "WHEEL",
        info + "RECORD",
        info + "entry_points.txt",
        info + "top_level.txt",
        info + "licenses/LICENSE",
    }
    licence = wheel.read(info + "licenses/LICENSE").decode("utf-8")
    assert [line.strip() for line in licence.strip().splitlines()[:2]] == APACHE_FIRST_LINES
    assert licence == (ROOT / "LICENSE").read_text(encoding="utf-8")
    entry_points = wheel.read(info + "entry_points.txt").decode("utf-8")
    assert "clarifai-interceptor = clarifai_interceptor.__main__:main" in entry_points
    assert "clarifai_interceptor = clarifai_interceptor.pytest_plugin" in entry_points


def test_metadata_declares_licence_floors_and_no_empty_url(
    metadata: dict[str, list[str]],
) -> None:
    assert metadata["Name"] == ["clarifai-interceptor"]
    assert metadata["Version"] == [VERSION]
    licence = metadata.get("License-Expression") or metadata.get("License")
    assert licence == ["Apache-2.0"]
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg", encoding="utf-8")
    declared = setup["options"]["install_requires"].split()
    required = [req for req in metadata["Requires-Dist"] if "extra ==" not in req]
    assert sorted(req.replace(" ", "") for req in required) == sorted(declared)
    assert all(">=" in req for req in declared)  # each dependency has a floor
    for field in ("Home-page", "Download-URL", "Project-URL"):
        for value in metadata.get(field, []):
            url = value.split(", ", 1)[-1]
            assert url.startswith("https://"), (field, value)  # PyPI takes http(s) URLs only
    assert all(
        value.strip() and value != "UNKNOWN" for values in metadata.values() for value in values
    )
    extras = set(metadata["Provides-Extra"])
    assert {"test", "dev", "docs", "bench"} <= extras


def test_twine_check_passes(dist: Path) -> None:
    files = sorted(str(path) for path in dist.iterdir())
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2, done.stdout
