"""The public API: exported names, and what importing the package sets up."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import subprocess
import sys

import clarifai_interceptor
from clarifai_interceptor import exceptions


def test_all_is_sorted_and_complete() -> None:
    public = {
        name
        for name, value in vars(clarifai_interceptor).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("clarifai_interceptor")
    }
    names = clarifai_interceptor.__all__
    # isort-style order, as ruff's RUF022 keeps it: constants, then classes, then the rest.
    assert names == sorted(names, key=lambda n: (not n.isupper(), not n[:1].isupper(), n))
    assert public <= set(clarifai_interceptor.__all__)
    for name in clarifai_interceptor.__all__:
        assert hasattr(clarifai_interceptor, name), name


def test_exceptions_are_reexported() -> None:
    for name in exceptions.__all__:
        assert getattr(clarifai_interceptor, name) is getattr(exceptions, name)
    assert issubclass(clarifai_interceptor.MissingCredentialsError, ValueError)


def test_using_the_package_fixes_the_v2stub_quirk_in_a_fresh_process() -> None:
    code = (
        "import grpc, clarifai_interceptor\n"
        "clarifai_interceptor.RetryPolicy  # the first use of a name of the package\n"
        "from clarifai_grpc.grpc.api import service_pb2_grpc\n"
        "service_pb2_grpc.V2Stub(grpc.insecure_channel('localhost:1'))\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_pytest_plugin_imports_nothing_heavy_in_a_fresh_process() -> None:
    # Every pytest run of an environment with the package loads the plugin (entry point).
    code = (
        "import clarifai_interceptor.pytest_plugin, sys; "
        "print('grpc' in sys.modules, 'clarifai_grpc' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_a_name_of_the_package_loads_on_first_use_in_a_fresh_process() -> None:
    code = (
        "import sys, clarifai_interceptor as ci\n"
        "assert 'grpc' not in sys.modules\n"
        "assert ci.__version__ and 'grpc' not in sys.modules\n"
        "from clarifai_interceptor import Credentials, secure_channel\n"
        "assert ci.Credentials is Credentials and 'grpc' in sys.modules\n"
        "assert {'RetryPolicy', 'wrap_channel'} <= set(dir(ci))\n"
        "from clarifai_interceptor import aio\n"
        "print(aio.secure_channel.__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clarifai_interceptor.aio"


def slotted_dataclasses() -> list[type]:
    """Every ``dataclass(slots=True)`` the package defines (the SDK module's when it imports)."""
    found: list[type] = []
    for info in pkgutil.walk_packages(clarifai_interceptor.__path__, "clarifai_interceptor."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # clarifai_interceptor.sdk without the [sdk] extra
            continue
        found.extend(
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and value.__module__ == info.name
            and dataclasses.is_dataclass(value)
            and "__slots__" in value.__dict__
        )
    return found


def test_slotted_dataclasses_show_their_members() -> None:
    # Python 3.10's dataclass(slots=True) left the original class's __weakref__ on the new
    # one, where it applies to no instance: getmembers (and help) raised TypeError.
    classes = slotted_dataclasses()
    assert len(classes) >= 7
    for cls in classes:
        stale = cls.__dict__.get("__weakref__")
        assert stale is None or stale.__objclass__ is cls, cls
        inspect.getmembers(cls)
    inspect.getmembers(clarifai_interceptor.Credentials.from_api_key("fake-key"))
    inspect.getmembers(clarifai_interceptor.RetryPolicy())
