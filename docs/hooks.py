"""mkdocs hooks: status-code tables computed from the installed package, and the benchmark figures.

A page writes ``<!-- statuses: NAME -->`` for a frozenset of status codes exported by
``clarifai_interceptor`` (e.g. ``DEFAULT_RETRYABLE_STATUSES``); the build replaces it with a
table of each code's name and value, so the reference never shows bare integers and never
falls behind the code.

The figures ``python -m benchmarks.throttle --plot`` draws live in ``benchmarks/results/``, outside
the docs: the build adds each of `FIGURES` to the site under ``figures/``, so a page links
``figures/NAME.png`` (and ``--strict`` fails on a figure that is gone).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from clarifai_grpc.grpc.api.status import status_code_pb2
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

import clarifai_interceptor

_MARKER = re.compile(r"<!-- statuses: ([A-Z_]+) -->")

#: The benchmark figures the pages show, in the project's ``benchmarks/results/``.
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
FIGURES = ("throttle-fleet.png",)


def _table(match: re.Match[str]) -> str:
    codes = getattr(clarifai_interceptor, match.group(1))
    rows = [f"| `{status_code_pb2.StatusCode.Name(code)}` | {code} |" for code in sorted(codes)]
    return "\n".join(["| status | code |", "|---|---|", *rows])


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace each ``<!-- statuses: NAME -->`` marker with its table."""
    return _MARKER.sub(_table, markdown)


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    """Add each of `FIGURES` to the site as ``figures/NAME``."""
    for name in FIGURES:
        files.append(File.generated(config, f"figures/{name}", abs_src_path=str(RESULTS / name)))
    return files
