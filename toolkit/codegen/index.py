"""Find the generated model class for (schemaName, schemaVersion): the runtime's view of codegen output."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator, Mapping

from pydantic import BaseModel

from toolkit import _args
from toolkit.errors import CodegenError, InvalidArgument

INDEX_MODULE = "_index"


class ModelIndex:
    """The generated ``MODELS`` table; model modules are imported on first use and cached."""

    def __init__(self, package: str, entries: Mapping[tuple[str, int], str]) -> None:
        self.package = package
        self._entries = dict(entries)
        self._classes: dict[tuple[str, int], type[BaseModel]] = {}
        self._lock = threading.Lock()

    def get(self, schema_name: str, version: int) -> type[BaseModel] | None:
        """The root model class, or None when codegen produced no model for this schema version.

        Raises:
            CodegenError: the index names a module or class that cannot be imported (stale output:
                run ``make codegen``).
        """
        key = (schema_name, version)
        cls = self._classes.get(key)
        if cls is not None:
            return cls
        target = self._entries.get(key)
        if target is None:
            return None
        with self._lock:
            cls = self._classes.get(key) or self._import(target)
            self._classes[key] = cls
        return cls

    def _import(self, target: str) -> type[BaseModel]:
        module_name, _, class_name = target.partition(":")
        qualified = f"{self.package}.{module_name}"
        try:
            cls = getattr(importlib.import_module(qualified), class_name)
        except (ImportError, AttributeError) as exc:
            raise CodegenError(
                qualified,
                f"cannot load generated model {class_name}: {exc}",
                fix="run `make codegen` and commit generated_models/",
            ) from None
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            raise CodegenError(qualified, f"{class_name} is not a pydantic model", fix="run `make codegen`")
        return cls

    def key_of(self, model: type[BaseModel]) -> tuple[str, int] | None:
        """The reverse look-up: ``(schemaName, schemaVersion)`` of a generated root model class, or None
        when ``model`` is not one (a nested class, a subclass, a model of another package). Only the
        candidate module is imported, never the whole index."""
        prefix = f"{self.package}."
        if not model.__module__.startswith(prefix):
            return None
        target = f"{model.__module__.removeprefix(prefix)}:{model.__qualname__}"
        for key, entry in self._entries.items():
            if entry == target:
                return key if self.get(*key) is model else None
        return None

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


def load_model_index(package: str = "generated_models") -> ModelIndex:
    """Read ``<package>._index`` (written by ``epistle codegen``); the models themselves load lazily.

    Raises:
        CodegenError: the package or its index is missing or malformed (run ``make codegen``).
    """
    _args.text("package", package)
    if not all(part.isidentifier() for part in package.split(".")):
        raise InvalidArgument(
            f"package {package!r} is not a Python package name; use e.g. generated_models", argument="package"
        )
    try:
        module = importlib.import_module(f"{package}.{INDEX_MODULE}")
    except ImportError as exc:
        raise CodegenError(
            package, f"no generated model index ({exc})", fix="run `make codegen` (epistle codegen) to generate it"
        ) from None
    entries = getattr(module, "MODELS", None)
    if not isinstance(entries, Mapping):
        raise CodegenError(package, f"{package}.{INDEX_MODULE} has no MODELS mapping", fix="run `make codegen`")
    return ModelIndex(package, entries)
