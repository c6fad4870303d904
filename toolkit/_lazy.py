"""Deferred execution of the slow format-checker modules ``import jsonschema`` pulls in.

``import jsonschema`` imports every optional format checker it finds installed, and one of them,
``rfc3987_syntax`` (the "iri" / "iri-reference" formats), builds a lark grammar when imported: 0.5 s on
a quiet machine, 5 s on a loaded one, paid by every command that touches JSON Schema (``epistle check``,
codegen, the consumer's validator) whether or not a schema uses those formats. Another, ``isoduration``
(the "duration" format), imports ``arrow`` and ``dateutil``: a fifth of ``import jsonschema`` again, for a
module it only calls when a "duration" string is checked.

:func:`defer_format_modules` (called once by ``import toolkit``) makes those modules import as an empty shell
whose real code runs on first use: the functions jsonschema binds with ``from module import function`` are
stand-ins that load the module and call the real function; any other attribute loads it too (dunders included,
such as ``__version__`` and ``__all__``; only introspection probes such as ``__path__`` do not). The module
stays a shell until its code has finished running (other threads wait for it); code that fails leaves the
shell as it was, so the next use tries again. Nothing else changes: the same module object is in
``sys.modules``, the same code runs, the same answers come back; only *when* the module's code runs moves,
from ``import jsonschema`` to the first body checked against an "iri" format. A module already imported is
left alone.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

# module -> the names jsonschema takes with ``from module import name`` at import time
DEFERRED: dict[str, tuple[str, ...]] = {
    "rfc3987_syntax": ("is_valid_syntax",),
    "rfc3986_validator": ("validate_rfc3986",),
    "arrow": (),  # isoduration's parser does ``import arrow`` and uses it only inside parse_duration
}


# Attributes looked up *on purpose* without wanting the module run: ``__path__`` by the import system on every
# ``from module import name`` (running the module there would undo the deferral), the rest by introspection
# (inspect.unwrap, doctest, pytest, typing). Any other missing name, dunders included (``__version__``,
# ``__all__`` for ``from module import *``), runs the module first.
_PROBES = frozenset({"__path__", "__wrapped__", "__test__", "__signature__", "__origin__", "__func__"})


class _Shell(types.ModuleType):
    """A module whose code has not run yet (or is running); any missing attribute runs it first."""

    def __getattr__(self, name: str) -> Any:
        if name in _PROBES or self.__dict__.get("_epistle_loading") == threading.get_ident():
            # a probe, or the module's own code asking for a name it has not defined yet: as a plain module
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        _load(self)
        return getattr(self, name)


_lock = threading.RLock()


def _load(module: types.ModuleType) -> None:
    """Run the module's code, once. Until it has finished the module stays a _Shell: another thread wanting
    one of its names waits on the lock. If the code fails, the module is put back as it was (a shell with
    its stand-ins), so the next use tries again and raises the same error, as a retried import would."""
    with _lock:
        if type(module) is not _Shell or "_epistle_loading" in module.__dict__:  # done, or running here
            return
        before = dict(module.__dict__)
        real_loader = module.__dict__.pop("_epistle_real_loader")
        for name in DEFERRED.get(module.__name__, ()):
            module.__dict__.pop(name, None)
        module.__dict__["_epistle_loading"] = threading.get_ident()
        try:
            real_loader.exec_module(module)
        except BaseException:
            module.__dict__.clear()
            module.__dict__.update(before)  # the loader, the stand-ins and no half-run code
            raise
        module.__dict__.pop("_epistle_loading", None)
        # a plain module again; mypy types __class__ as type[Self], so no demotion type-checks
        module.__class__ = types.ModuleType  # type: ignore[assignment]


def _stand_in(module: types.ModuleType, name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        _load(module)
        return getattr(module, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


class _DeferredLoader:
    """An importlib loader (duck-typed: importlib.abc alone costs more to import than this module)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def create_module(self, spec: ModuleSpec) -> types.ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__["_epistle_real_loader"] = self.real
        for name in DEFERRED[module.__name__]:
            setattr(module, name, _stand_in(module, name))
        module.__class__ = _Shell


class _Finder:
    """A meta path finder (duck-typed) for the modules in DEFERRED only."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> ModuleSpec | None:
        if fullname not in DEFERRED:
            return None
        for finder in sys.meta_path:  # the real spec, from the finders after us
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        # the import system takes any object with exec_module; the stubs ask for importlib.abc.Loader
        spec.loader = _DeferredLoader(spec.loader)  # type: ignore[assignment]
        return spec


_FINDER = _Finder()


def defer_format_modules() -> None:
    """Install the deferral (idempotent); modules already imported are not touched."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
