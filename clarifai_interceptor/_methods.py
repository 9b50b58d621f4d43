"""Per-method retry policies: which V2 methods are reads and which are writes, and a mapping from
method names or patterns to policies where the most specific match wins.

A read may be retried on outcomes that leave it unclear whether the server acted
(``DEADLINE_EXCEEDED``, ``RPC_REQUEST_TIMEOUT``, a dropped connection's ``UNAVAILABLE``): doing
it twice changes nothing. A write must not be: only body statuses that say the request was not
processed (throttled, model loading, queue full, ...) are retried by default, so a ``PostInputs``
whose connection dropped after the server stored it is never stored twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

import grpc
from clarifai_grpc.grpc.api import service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2 as _sc

from ._policy import (
    DEFAULT_RETRYABLE_CODES,
    DEFAULT_RETRYABLE_STATUSES,
    RetryPolicy,
    method_name,
)

__all__ = [
    "READ_PATTERNS",
    "READ_RETRY",
    "V2_METHODS",
    "WRITES_NAMED_AS_READS",
    "WRITE_RETRY",
    "Policies",
    "is_read",
]

#: Every method of the installed ``clarifai.api.V2`` service, by short name.
V2_METHODS: frozenset[str] = frozenset(
    method.name for method in service_pb2.DESCRIPTOR.services_by_name["V2"].methods
)
#: The V2 methods that are reads: they change nothing on the server (queries, predictions,
#: streams of results). Every other method is a write.
READ_PATTERNS: tuple[str, ...] = (
    "Get*",
    "List*",
    "My*",
    "Stream*",
    "Generate*",
    "Post*Searches",
    "PostSearchesByID",
    "PostMetricsQuery",
    "PostModelOutputs",
    "PostWorkflowResults",
)
#: Methods the read patterns match that change state on the server: writes, whatever their
#: name says. ``ListNextTaskAssignments`` assigns inputs to the labeller (its proto: "re-designed
#: to serve a PUT logic"); ``PostSearches`` may save the search ("Execute a new search and
#: optionally save it"); ``ListRunnerItems`` hands work items out to a runner, so a retry after
#: a lost answer leases a second batch while the first is held by nobody.
WRITES_NAMED_AS_READS: tuple[str, ...] = (
    "ListNextTaskAssignments",
    "ListRunnerItems",
    "PostSearches",
)

#: The default policy for reads: transient failures, and outcomes that may hide a done read.
READ_RETRY = RetryPolicy(
    retryable_codes=DEFAULT_RETRYABLE_CODES | {grpc.StatusCode.DEADLINE_EXCEEDED},
    retryable_statuses=DEFAULT_RETRYABLE_STATUSES | {_sc.RPC_REQUEST_TIMEOUT},
)
#: The default policy for writes: only statuses that say the request was not processed; no
#: gRPC code (a dropped connection may come after the server acted).
WRITE_RETRY = RetryPolicy(retryable_codes=frozenset())

_PATTERN_RE = re.compile(r"[A-Za-z0-9_.*/]+")


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


_READS = [_glob(pattern) for pattern in READ_PATTERNS]


def is_read(method: str | bytes) -> bool:
    """Whether a method (short or full name) is a read of the default classification."""
    name = method_name(method)
    if name in WRITES_NAMED_AS_READS:
        return False
    return any(pattern.fullmatch(name) for pattern in _READS)


class Policies:
    """Which `RetryPolicy` each method gets: the most specific matching pattern wins.

    A pattern is a method's short name (``PostInputs``), its full name
    (``/clarifai.api.V2/PostInputs``), or either with ``*`` wildcards (``Post*``,
    ``/clarifai.api.V2/*``, ``*``). An exact name beats any pattern; among patterns, the one
    with more literal characters wins.
    """

    __slots__ = ("_cache", "_rules")

    def __init__(self, rules: Mapping[str, RetryPolicy]) -> None:
        self._rules = [
            (pattern, _glob(pattern), policy)
            for pattern, policy in sorted(rules.items(), key=lambda item: _specificity(item[0]))
        ]
        self._cache: dict[str | bytes, RetryPolicy | None] = {}

    def get(self, method: str | bytes) -> RetryPolicy | None:
        """The policy for ``method`` (short or full name, str or bytes), or None if no rule
        matches."""
        found = self._cache.get(method, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        full = method.decode("ascii", "replace") if isinstance(method, bytes) else method
        short = method_name(full)
        policy = next(
            (p for _, regex, p in self._rules if regex.fullmatch(full) or regex.fullmatch(short)),
            None,
        )
        if len(self._cache) < 4096:  # bounded: method names come from stubs, but be safe
            self._cache[method] = policy
        return policy


_MISSING = object()


def _specificity(pattern: str) -> tuple[bool, int]:
    """Sort key: exact names first, then patterns with more literal characters."""
    return ("*" in pattern, -len(pattern.replace("*", "")))


@lru_cache(maxsize=1)
def default_rules() -> dict[str, RetryPolicy]:
    """The default classification as rules: reads get `READ_RETRY`, everything else
    `WRITE_RETRY` (an exact name beats a pattern: `WRITES_NAMED_AS_READS` are writes)."""
    rules = dict.fromkeys(READ_PATTERNS, READ_RETRY)
    rules.update(dict.fromkeys(WRITES_NAMED_AS_READS, WRITE_RETRY))
    rules["*"] = WRITE_RETRY
    return rules


def check(policies: object) -> dict[str, RetryPolicy]:
    """Validate a ``policies=`` mapping when a channel is built, naming what is wrong.

    Raises:
        TypeError: Not a mapping of str to `RetryPolicy`.
        ValueError: A key is empty, has characters a method name cannot have, or names a V2
            method that does not exist.
    """
    if not isinstance(policies, Mapping):
        raise TypeError(
            f"policies must be a mapping of method names or patterns to RetryPolicy, "
            f"not {type(policies).__name__}"
        )
    checked: dict[str, RetryPolicy] = {}
    for key, policy in policies.items():
        if not isinstance(key, str) or not _PATTERN_RE.fullmatch(key):
            raise ValueError(
                f"policies key {key!r}: a method name or pattern is letters, digits, '_', '.', "
                "'/' and '*' wildcards, e.g. 'PostInputs', 'Post*' or '/clarifai.api.V2/*'"
            )
        if "*" not in key and "/" not in key and key not in V2_METHODS:
            raise ValueError(f"policies key {key!r} is not a method of clarifai.api.V2")
        if not isinstance(policy, RetryPolicy):
            raise TypeError(f"policies[{key!r}] must be a RetryPolicy, not {type(policy).__name__}")
        checked[key] = policy
    return checked
