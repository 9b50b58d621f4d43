"""mkdocs hooks: status-code tables computed from the installed package, and the benchmark figures.

A page writes ``<!-- statuses: NAME -->`` for a frozenset of status codes exported by
``clarifai_interceptor`` (e.g. ``DEFAULT_RETRYABLE_STATUSES``); the build replaces it with a
table of each code's name and value, so the reference never shows bare integers and never
falls behind the code.

The figures ``python -m benchmarks.throttle --plot`` draws live in ``benchmarks/results/``, outside
the docs: the build adds each of `FIGURES` to the site under ``figures/``, so a page links
``figures/NAME.png``. The source distribution carries no results: there, a figure's image is
replaced by a line naming the file, so that the docs still build with ``--strict``.
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
_FIGURE = re.compile(r"!\[([^\]]*)\]\(figures/([^)]+)\)")


def _table(match: re.Match[str]) -> str:
    codes = getattr(clarifai_interceptor, match.group(1))
    rows = [f"| `{status_code_pb2.StatusCode.Name(code)}` | {code} |" for code in sorted(codes)]
    return "\n".join(["| status | code |", "|---|---|", *rows])


def _figure(match: re.Match[str]) -> str:
    if (RESULTS / match.group(2)).is_file():
        return match.group(0)
    return f"*{match.group(1)}: `benchmarks/results/{match.group(2)}` (not in this copy).*"


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace each ``<!-- statuses: NAME -->`` marker with its table, and a missing figure's
    image with a line naming it."""
    return _FIGURE.sub(_figure, _MARKER.sub(_table, markdown))


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    """Add each of `FIGURES` to the site as ``figures/NAME``."""
    for name in FIGURES:
        if not (RESULTS / name).is_file():
            continue  # a source distribution: on_page_markdown names the file instead
        files.append(File.generated(config, f"figures/{name}", abs_src_path=str(RESULTS / name)))
    return files
