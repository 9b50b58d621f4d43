"""The package's own documentation: ``help(clarifai_interceptor)`` starts with a real guide.

The API reference (``docs/``, mkdocs + mkdocstrings) is built with ``--strict`` by ``.ci/run``.
"""

from __future__ import annotations

import pydoc

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
