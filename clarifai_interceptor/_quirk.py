"""The ``V2Stub`` quirk, fixed without importing gRPC: `install` costs nothing until
``clarifai_grpc.channel.clarifai_channel`` is imported (by the package itself, or by
``V2Stub(...)``, which imports it to read a module global that only ``ClarifaiChannel``'s
getters set: without it every stub on a channel of ours fails with "'NoneType' object is not
callable").
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

__all__ = ["install"]

_MODULE = "clarifai_grpc.channel.clarifai_channel"


def _fix(module: Any) -> None:
    if getattr(module, "wrap_response_deserializer", None) is None:
        module.wrap_response_deserializer = module._response_deserializer_for_grpc  # noqa: SLF001


class _Finder(MetaPathFinder):
    """Finds nothing itself: asks the finders after it for the module, and has its loader fix
    the quirk once the module has run; then leaves ``sys.meta_path``."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != _MODULE:
            return None
        _uninstall(self)
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec: ModuleSpec | None = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader: Any = spec.loader
        run = getattr(loader, "exec_module", None)
        if run is None:
            return spec

        def exec_module(module: ModuleType) -> None:
            run(module)
            _fix(module)

        loader.exec_module = exec_module  # this spec's own loader (one per module found)
        return spec


def _uninstall(finder: _Finder) -> None:
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)


def install() -> None:
    """Fix the quirk now if the module is loaded, else when it is."""
    module = sys.modules.get(_MODULE)
    if module is not None:
        _fix(module)
    elif not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
