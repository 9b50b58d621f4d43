"""A pytest plugin: no secret used anywhere in the test suite may leak out of the package.

Register it from ``tests/conftest.py`` with ``pytest_plugins = ["secrets_guard"]``, or on the
command line with ``-p tests.secrets_guard`` (from the project root).

What it collects, for the whole session:

* every secret: each `Credentials` built while the plugin is active (its ``__post_init__`` is
  wrapped), and each one already alive when collection ends (a garbage-collector scan, for the
  module-level ones of conftest and test modules).

What it looks at, per test phase (setup, call, teardown):

* every log record of every logger (a handler on the root logger; the package's own logger is
  set to DEBUG for the session, so its debug records are made): the message, the arguments, the
  exception and stack text;
* every warning shown or recorded (``warnings.WarningMessage`` is wrapped: ``pytest.warns``,
  ``recwarn`` and pytest's own warning capture all build one);
* every exception a test caught with ``pytest.raises``, and the exception a test ended with:
  its ``str`` and ``repr`` (not its chained causes, which may be the test's own);
* the ``repr`` and ``str`` of each `Credentials`, `ClarifaiInterceptor`, wrapped channel and
  aio interceptor built, and of the first `RecordedCall` objects of each phase;
* exported telemetry, when the libraries are installed: every OpenTelemetry span that ends in an
  SDK ``TracerProvider`` (its name, attributes, status, its events' names and attributes, its
  links' attributes), every batch of OpenTelemetry metrics an ``InMemoryMetricReader`` or a
  ``PeriodicExportingMetricReader`` receives (names, descriptions, data points' attributes,
  exemplars' attributes), and every Prometheus metric a ``CollectorRegistry`` collects (names,
  documentation, samples' names and labels, exemplars' labels).

A phase in which any collected secret appears in any of these fails, with a message that names
the test, the phase and where the secret was seen, never the secret itself; the captured output
and traceback pytest shows for that phase are redacted.

Secrets shorter than `MIN_LENGTH` characters or with fewer than `MIN_DISTINCT` distinct
characters are not tracked: property tests build secrets such as ``"a"`` or ``"00000000"``,
which appear in ordinary text (object addresses) without having leaked.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import threading
import traceback
import warnings
from collections.abc import Callable, Generator
from typing import Any

import pytest

__all__ = ["MIN_DISTINCT", "MIN_LENGTH", "SecretsGuard"]

#: Shortest secret tracked.
MIN_LENGTH = 8
#: Fewest distinct characters in a tracked secret.
MIN_DISTINCT = 4
#: Characters of observed text kept before they are checked early (memory stays bounded).
_FLUSH_AT = 4_000_000
#: `RecordedCall` reprs checked per phase (a load test records thousands of calls).
_RECORDED_CALL_REPRS = 200

_KEY = pytest.StashKey["SecretsGuard"]()


class SecretsGuard:
    """The session's secrets, the text observed in the current phase, and the leaks found."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[str, str] = {}  # secret -> where it was first seen
        self._texts: list[tuple[str, str]] = []  # (where, text)
        self._size = 0
        self._leaks: dict[tuple[int, str], None] = {}  # (secret number, where), in order
        self._recorded_calls = 0
        self.texts_checked = 0
        self.leaks_found = 0
        self.test = "collection"
        self._undo: list[Callable[[], None]] = []

    # -- collecting ------------------------------------------------------------------------

    def add_secret(self, secret: object) -> None:
        """Track ``secret`` from now on, if it is distinctive enough to be found reliably."""
        if not isinstance(secret, str) or len(secret) < MIN_LENGTH:
            return
        if len(set(secret)) < MIN_DISTINCT:
            return
        with self._lock:
            self._secrets.setdefault(secret, self.test)

    def observe(self, where: str, text: object) -> None:
        """Remember ``text`` (seen at ``where``) for the check at the end of the phase."""
        if not isinstance(text, str):
            try:
                text = repr(text)
            except Exception:  # noqa: BLE001 (a broken repr is not a leak)
                return
        with self._lock:
            self._texts.append((where, text))
            self._size += len(text)
            self.texts_checked += 1
            flush = self._size > _FLUSH_AT
        if flush:
            self._scan()

    def observe_object(self, what: str, obj: object) -> None:
        """Remember the ``repr`` and ``str`` of a package object."""
        for show in (repr, str):
            with contextlib.suppress(Exception):  # a broken repr is not a leak
                self.observe(f"the {show.__name__}() of a {what}", show(obj))

    def observe_exception(self, where: str, exc: BaseException) -> None:
        """Remember the ``str`` and ``repr`` of an exception, and its notes."""
        name = type(exc).__name__
        self.observe_object(f"{name} ({where})", exc)
        for note in getattr(exc, "__notes__", None) or ():
            self.observe(f"a note of a {name} ({where})", note)

    def observe_recorded_call(self, call: object) -> None:
        """Remember the ``repr`` of one of the first `RecordedCall` objects of the phase."""
        with self._lock:
            self._recorded_calls += 1
            if self._recorded_calls > _RECORDED_CALL_REPRS:
                return
        self.observe_object("RecordedCall", call)

    # -- checking --------------------------------------------------------------------------

    def _scan(self) -> None:
        with self._lock:
            texts, self._texts, self._size = self._texts, [], 0
            secrets = list(self._secrets)
        if not texts or not secrets:
            return
        # One search per secret in all the text at once, then find where for the ones found.
        joined = "\x00".join(text for _, text in texts)
        for number, secret in enumerate(secrets, 1):
            if secret not in joined:
                continue
            for where, text in texts:
                if secret in text:
                    with self._lock:
                        self._leaks[(number, where)] = None

    def end_phase(self) -> list[str]:
        """Check the phase's text; return one line per leak found (the secret is not in it)."""
        self._scan()
        with self._lock:
            leaks, self._leaks, self._recorded_calls = list(self._leaks), {}, 0
            secrets = list(self._secrets.items())
        self.leaks_found += len(leaks)
        lines = []
        for number, where in leaks:
            secret, first_seen = secrets[number - 1]
            lines.append(
                f"secret #{number} ({len(secret)} characters, first seen in {first_seen}) "
                f"appeared in {where}"
            )
        return lines

    def redact(self, text: str) -> str:
        """``text`` with every tracked secret replaced by its number."""
        with self._lock:
            secrets = list(self._secrets)
        for number, secret in enumerate(secrets, 1):
            if secret in text:
                text = text.replace(secret, f"<secret #{number}>")
        return text

    @property
    def secret_count(self) -> int:
        """How many secrets are tracked."""
        with self._lock:
            return len(self._secrets)

    # -- installing ------------------------------------------------------------------------

    def install(self) -> None:
        """Wrap what must be observed; `uninstall` undoes it."""
        from clarifai_interceptor import _channel, aio, testing  # noqa: PLC0415
        from clarifai_interceptor._credentials import Credentials  # noqa: PLC0415
        from clarifai_interceptor._interceptor import ClarifaiInterceptor  # noqa: PLC0415

        guard = self

        def after_init(cls: type, name: str, what: str) -> None:
            original = cls.__dict__[name]

            @functools.wraps(original)
            def wrapper(obj: Any, *args: Any, **kwargs: Any) -> Any:
                result = original(obj, *args, **kwargs)
                if isinstance(obj, Credentials):
                    guard.add_secret(obj.secret.reveal())
                guard.observe_object(what, obj)
                return result

            self._patch(cls, name, wrapper)

        after_init(Credentials, "__post_init__", "Credentials")
        after_init(ClarifaiInterceptor, "__init__", "ClarifaiInterceptor")
        after_init(_channel._Channel, "__init__", "wrapped channel")
        after_init(aio._Interceptor, "__init__", "aio interceptor")
        sharing = aio._Interceptor.__dict__["_sharing"].__func__

        def shared(cls: Any, core: Any) -> Any:
            interceptor = sharing(cls, core)
            guard.observe_object("aio interceptor", interceptor)
            return interceptor

        self._patch(aio._Interceptor, "_sharing", classmethod(shared))

        recorded = testing.RecordedCall.__dict__["__init__"]

        def recorded_init(call: Any, *args: Any, **kwargs: Any) -> None:
            recorded(call, *args, **kwargs)
            guard.observe_recorded_call(call)

        self._patch(testing.RecordedCall, "__init__", recorded_init)

        message_init = warnings.WarningMessage.__init__

        def warning_init(message: Any, *args: Any, **kwargs: Any) -> None:
            message_init(message, *args, **kwargs)
            guard.observe(f"a warning ({getattr(message, 'category', None)})", message.message)

        self._patch(warnings.WarningMessage, "__init__", warning_init)

        raises = pytest.raises

        @functools.wraps(raises)
        def watched_raises(*args: Any, **kwargs: Any) -> Any:
            result = raises(*args, **kwargs)
            if isinstance(result, pytest.ExceptionInfo):  # the pytest.raises(E, func) form
                guard.observe_exception("caught by pytest.raises", result.value)
                return result
            return _WatchedRaises(result, guard)

        self._patch(pytest, "raises", watched_raises)
        self._install_telemetry()

        handler = _Handler(self)
        root = logging.getLogger()
        root.addHandler(handler)
        self._undo.append(lambda: root.removeHandler(handler))
        package = logging.getLogger("clarifai_interceptor")
        level = package.level
        package.setLevel(logging.DEBUG)
        self._undo.append(lambda: package.setLevel(level))

        self.scan_heap()

    def _install_telemetry(self) -> None:
        """Observe what OpenTelemetry and Prometheus export (each only if installed)."""
        guard = self
        try:
            from opentelemetry.sdk.metrics import export as metrics_export  # noqa: PLC0415
            from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor  # noqa: PLC0415
        except ImportError:
            pass
        else:
            on_end = SynchronousMultiSpanProcessor.__dict__["on_end"]

            def span_ended(processor: Any, span: Any) -> None:
                guard.observe_span(span)
                on_end(processor, span)

            self._patch(SynchronousMultiSpanProcessor, "on_end", span_ended)
            for reader in (
                metrics_export.InMemoryMetricReader,
                metrics_export.PeriodicExportingMetricReader,
            ):
                self._patch(reader, "_receive_metrics", self._metrics_receiver(reader))
        try:
            from prometheus_client.registry import CollectorRegistry  # noqa: PLC0415
        except ImportError:
            return
        collect = CollectorRegistry.__dict__["collect"]

        def collected(registry: Any) -> Any:
            for metric in collect(registry):
                guard.observe_prometheus(metric)
                yield metric

        self._patch(CollectorRegistry, "collect", collected)

    def _metrics_receiver(self, reader: type) -> Callable[..., Any]:
        receive = reader.__dict__["_receive_metrics"]
        guard = self

        def received(obj: Any, metrics_data: Any, *args: Any, **kwargs: Any) -> Any:
            guard.observe_metrics(metrics_data)
            return receive(obj, metrics_data, *args, **kwargs)

        return received

    def observe_span(self, span: Any) -> None:
        """Remember what an ended OpenTelemetry span would export."""
        where = f"an OpenTelemetry span ({span.name!r})"
        self.observe(where, span.name)
        self.observe(f"the attributes of {where}", dict(span.attributes or {}))
        self.observe(f"the status of {where}", getattr(span.status, "description", None) or "")
        for event in span.events:
            self.observe(f"an event of {where}", event.name)
            self.observe(f"an event's attributes of {where}", dict(event.attributes or {}))
        for link in span.links:
            self.observe(f"a link's attributes of {where}", dict(link.attributes or {}))

    def observe_metrics(self, metrics_data: Any) -> None:
        """Remember what a batch of OpenTelemetry metrics would export."""
        for resource in getattr(metrics_data, "resource_metrics", None) or ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    where = f"the OpenTelemetry metric {metric.name!r}"
                    self.observe(where, f"{metric.name} {metric.description} {metric.unit}")
                    for point in getattr(metric.data, "data_points", ()):
                        self.observe(f"a data point's attributes of {where}", point.attributes)
                        for exemplar in getattr(point, "exemplars", None) or ():
                            self.observe(
                                f"an exemplar's attributes of {where}",
                                exemplar.filtered_attributes,
                            )

    def observe_prometheus(self, metric: Any) -> None:
        """Remember what a collected Prometheus metric family would expose."""
        where = f"the Prometheus metric {metric.name!r}"
        self.observe(where, f"{metric.name} {metric.documentation}")
        for sample in metric.samples:
            self.observe(f"a sample of {where}", f"{sample.name} {sample.labels!r}")
            if sample.exemplar is not None:
                self.observe(f"an exemplar of {where}", sample.exemplar.labels)

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        had = name in vars(owner)
        old = vars(owner).get(name)
        setattr(owner, name, value)
        if had:
            self._undo.append(lambda: setattr(owner, name, old))
        else:
            self._undo.append(lambda: delattr(owner, name))

    def scan_heap(self) -> None:
        """Track the secrets of every `Credentials` alive now (those built before install)."""
        from clarifai_interceptor._credentials import Credentials  # noqa: PLC0415

        for obj in gc.get_objects():
            if type(obj) is Credentials:
                self.add_secret(obj.secret.reveal())

    def uninstall(self) -> None:
        """Undo `install`, last patch first."""
        while self._undo:
            self._undo.pop()()


class _WatchedRaises:
    """``pytest.raises(...)`` as a context manager, also showing the exception to the guard."""

    def __init__(self, inner: Any, guard: SecretsGuard) -> None:
        self._inner = inner
        self._guard = guard

    def __enter__(self) -> Any:
        return self._inner.__enter__()

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> Any:
        if exc is not None:
            self._guard.observe_exception("caught by pytest.raises", exc)
        return self._inner.__exit__(kind, exc, tb)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Handler(logging.Handler):
    """Shows every log record's text to the guard."""

    def __init__(self, guard: SecretsGuard) -> None:
        super().__init__(logging.NOTSET)
        self._guard = guard

    def emit(self, record: logging.LogRecord) -> None:
        where = f"a log record of logger {record.name!r}"
        guard = self._guard
        guard.observe(where, str(record.msg))
        guard.observe(where, record.args)
        with contextlib.suppress(Exception):  # a malformed record is not ours to judge
            guard.observe(where, record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            guard.observe(where, "".join(traceback.format_exception(*record.exc_info)))
        if record.exc_text:
            guard.observe(where, record.exc_text)
        if record.stack_info:
            guard.observe(where, record.stack_info)


def pytest_configure(config: pytest.Config) -> None:
    """Install the guard for the session."""
    guard = SecretsGuard()
    guard.install()
    config.stash[_KEY] = guard


def pytest_unconfigure(config: pytest.Config) -> None:
    """Uninstall the guard."""
    guard = config.stash.get(_KEY, None)
    if guard is not None:
        guard.uninstall()
        del config.stash[_KEY]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """One line: how many secrets were tracked, how many texts checked, how many leaks."""
    guard = config.stash.get(_KEY, None)
    if guard is not None:
        terminalreporter.write_line(
            f"secrets_guard: {guard.secret_count} secrets tracked, {guard.texts_checked} texts "
            "checked (log records, warnings, exceptions, reprs, telemetry), "
            f"{guard.leaks_found} leak(s)"
        )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Track the secrets of the `Credentials` built while modules were imported."""
    guard = session.config.stash.get(_KEY, None)
    if guard is not None:
        guard.scan_heap()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: object) -> Generator[None, object, object]:
    """Name the running test, for the "first seen in" of the secrets it builds."""
    guard = item.config.stash.get(_KEY, None)
    if guard is not None:
        guard.test = item.nodeid
    try:
        return (yield)
    finally:
        if guard is not None:
            guard.test = f"after {item.nodeid}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fail the phase in which a secret appeared anywhere the guard looks."""
    report = yield
    guard = item.config.stash.get(_KEY, None)
    if guard is None:
        return report
    if call.excinfo is not None:
        guard.observe_exception(f"the {call.when} phase ended with it", call.excinfo.value)
    lines = guard.end_phase()
    if not lines:
        return report
    message = "\n".join(
        [f"secrets_guard: a secret leaked during the {call.when} of {item.nodeid}:"]
        + [f"  - {line}" for line in lines]
    )
    # What pytest shows of this phase (captured output and logs, a failure's traceback) would
    # print the secret itself: shown redacted.
    report.sections = [(title, guard.redact(text)) for title, text in report.sections]
    if report.failed:
        report.longrepr = guard.redact(str(report.longrepr))
        report.sections.append(("secrets_guard", message))
    else:
        report.outcome = "failed"
        report.longrepr = message
        if hasattr(report, "wasxfail"):
            del report.wasxfail
    return report
