"""The floors setup.cfg declares, for .ci/run: dependency pins, and the Pythons to run on.

``floors.py [EXTRA | EXTRA:PACKAGE]...`` prints pip constraints pinning each install_requires
to its floor (x>=1.2: x==1.2), and each requirement of every EXTRA named (or only PACKAGE of
EXTRA). .ci/run's floors job installs the project with these constraints, so the floors
setup.cfg declares are the versions the suite is proven with. A pinned requirement without a
plain ``>=`` floor is an error, as is a package named twice with two floors.

``floors.py --check FILE``, run in the floors venv, prints each package FILE pins at the version
installed, and fails unless each is installed at exactly its pin.

``floors.py --pythons`` prints the oldest Python ``python_requires`` allows and the newest the
classifiers declare (``3.10 3.12``): the floors job runs on the first, the main job on the
second.
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

FLOOR = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)>=([0-9][0-9A-Za-z.]*)")
PYTHON_FLOOR = re.compile(r">=\s*(3\.[0-9]+)")
CLASSIFIER = re.compile(r"Programming Language :: Python :: (3\.[0-9]+)")


def _name(requirement: str) -> str:
    """The project name of a requirement, normalized (PEP 503) for comparison."""
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _pythons(setup: configparser.ConfigParser) -> str:
    floor = PYTHON_FLOOR.fullmatch(setup["options"]["python_requires"].strip())
    declared = CLASSIFIER.findall(setup["metadata"]["classifiers"])
    if floor is None or not declared:
        raise SystemExit("setup.cfg: no python_requires >=3.X floor, or no 3.X classifier")
    newest = max(declared, key=lambda version: tuple(map(int, version.split("."))))
    if floor.group(1) not in declared:
        raise SystemExit(f"setup.cfg: python_requires allows {floor.group(1)}, no classifier")
    return f"{floor.group(1)} {newest}"


def _pins(setup: configparser.ConfigParser, wanted: list[str]) -> list[str]:
    extras = setup["options.extras_require"]
    chosen = setup["options"]["install_requires"].split()
    for want in wanted:
        extra, _, package = want.partition(":")
        if extra not in extras:
            raise SystemExit(f"setup.cfg declares no extra {extra!r}")
        requirements = extras[extra].split()
        if package:
            requirements = [req for req in requirements if _name(req) == _name(package)]
            if not requirements:
                raise SystemExit(f"the extra {extra!r} does not require {package!r}")
        chosen += requirements
    pins: dict[str, str] = {}
    for requirement in chosen:
        found = FLOOR.fullmatch(requirement)
        if found is None:
            raise SystemExit(f"no plain >= floor in {requirement!r}")
        pin = f"{found.group(1)}=={found.group(2)}"
        if pins.setdefault(_name(requirement), pin) != pin:
            raise SystemExit(f"two floors for {found.group(1)}: {pins[_name(requirement)]}, {pin}")
    return list(pins.values())


def _check(pins: Path) -> int:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    from packaging.version import Version  # noqa: PLC0415 (in the venv: pytest needs it)

    wrong = 0
    for line in pins.read_text(encoding="utf-8").split():
        name, _, floor = line.partition("==")
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "not installed"
        ok = installed != "not installed" and Version(installed) == Version(floor)
        wrong += not ok
        sys.stdout.write(f"{name}=={installed}{'' if ok else f'  (pinned to {floor})'}\n")
    return 1 if wrong else 0


def main(argv: list[str]) -> int:
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parent.parent / "setup.cfg", encoding="utf-8")
    if len(argv) == 2 and argv[0] == "--check":
        return _check(Path(argv[1]))
    if argv == ["--pythons"]:
        sys.stdout.write(_pythons(setup) + "\n")
    else:
        sys.stdout.writelines(pin + "\n" for pin in _pins(setup, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
