"""mkdocs hook: tables of Clarifai status codes by name, computed from the installed package.

A page writes ``<!-- statuses: NAME -->`` for a frozenset of status codes exported by
``clarifai_interceptor`` (e.g. ``DEFAULT_RETRYABLE_STATUSES``); the build replaces it with a
table of each code's name and value, so the reference never shows bare integers and never
falls behind the code.
"""

from __future__ import annotations

import re
from typing import Any

from clarifai_grpc.grpc.api.status import status_code_pb2

import clarifai_interceptor

_MARKER = re.compile(r"<!-- statuses: ([A-Z_]+) -->")


def _table(match: re.Match[str]) -> str:
    codes = getattr(clarifai_interceptor, match.group(1))
    rows = [f"| `{status_code_pb2.StatusCode.Name(code)}` | {code} |" for code in sorted(codes)]
    return "\n".join(["| status | code |", "|---|---|", *rows])


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace each ``<!-- statuses: NAME -->`` marker with its table."""
    return _MARKER.sub(_table, markdown)
