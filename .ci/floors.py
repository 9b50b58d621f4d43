"""Print pip constraints pinning each install_requires of setup.cfg to its floor (x>=1.2: x==1.2).

.ci/run's floor job installs the project with these constraints, so the floors setup.cfg declares
are the versions the suite is proven with. A requirement without a `>=` floor is an error.
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

FLOOR = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)>=([0-9][0-9A-Za-z.]*)")


def main() -> int:
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parent.parent / "setup.cfg", encoding="utf-8")
    for requirement in setup["options"]["install_requires"].split():
        found = FLOOR.fullmatch(requirement)
        if found is None:
            sys.stderr.write(f"no plain >= floor in {requirement!r}\n")
            return 1
        sys.stdout.write(f"{found.group(1)}=={found.group(2)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
