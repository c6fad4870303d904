"""Build a generated model from a body nested deeper than pydantic can validate in one go.

pydantic-core validates at most 255 nested references to recursive models (a fixed limit of the library,
error type ``recursion_depth_exceeded``): a 1,000-node linked list cannot be built with one
``model_validate``. :func:`validate_deep` builds it bottom-up instead: it walks the value alongside the
model's field types, validates the sub-models every :data:`CHUNK` levels from the deepest up, and puts
each in place as an instance (pydantic takes an instance of the field's model as it is), so no single
validation goes deeper than :data:`CHUNK` model levels. The pipeline calls it only after the ordinary
``model_validate`` failed with that error, so the usual path costs nothing more.

The value given is not changed: containers on the walk are copied.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

CHUNK = 200  # < 255, pydantic-core's limit
_Path = tuple[str | int, ...]


def is_too_deep(errors: Iterable[Mapping[str, Any]]) -> bool:
    """True when pydantic gave up because of its recursion limit."""
    return any(error.get("type") == "recursion_depth_exceeded" for error in errors)


def validate_deep(model: type[BaseModel], value: Any) -> BaseModel:
    """``model.model_validate(value)``, for any nesting depth of recursive models.

    Raises:
        pydantic.ValidationError: as ``model_validate`` would; for an error inside a sub-model, ``loc`` is
            relative to it and a note on the exception names the sub-model and its path.
    """
    root: dict[str, Any] = {"": value}
    nodes: list[tuple[int, dict | list, str | int, type[BaseModel], _Path]] = []
    stack: list[tuple[dict | list, str | int, Any, int, _Path]] = [(root, "", model, 0, ())]
    while stack:
        parent, key, annotation, depth, path = stack.pop()
        item = parent[key]  # type: ignore[index]
        if isinstance(item, dict):
            target = _single_model(annotation)
            if target is not None:
                parent[key] = item = dict(item)  # type: ignore[index]
                nodes.append((depth + 1, parent, key, target, path))
                fields = _fields(target)
                for name in item:
                    if name in fields:
                        stack.append((item, name, fields[name], depth + 1, (*path, name)))
                continue
            values = _mapping_values(annotation)
            if values is not None:
                parent[key] = item = dict(item)  # type: ignore[index]
                stack += [(item, name, values, depth, (*path, name)) for name in item]
        elif isinstance(item, list):
            items = _sequence_items(annotation)
            if items is not None:
                parent[key] = item = list(item)  # type: ignore[index]
                stack += [(item, index, items, depth, (*path, index)) for index in range(len(item))]
    for depth, parent, key, target, path in sorted(nodes, key=lambda node: -node[0]):
        if depth % CHUNK == 0 and depth > 0:
            try:
                parent[key] = target.model_validate(parent[key])  # type: ignore[index]
            except Exception as exc:
                exc.add_note(f"in the sub-model {target.__name__} at {'/'.join(map(str, path))}")
                raise
    return model.model_validate(root[""])


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """Wire name (alias) and Python name -> annotation."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        fields[name] = info.annotation
        if info.alias:
            fields[info.alias] = info.annotation
    return fields


def _branches(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _branches(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [branch for arg in typing.get_args(annotation) for branch in _branches(arg)]
    return [annotation]


def _single_model(annotation: Any) -> type[BaseModel] | None:
    """The one BaseModel a JSON object at this place becomes, or None (no model, or several)."""
    models = [b for b in _branches(annotation) if isinstance(b, type) and issubclass(b, BaseModel)]
    return models[0] if len(models) == 1 else None


def _mapping_values(annotation: Any) -> Any | None:
    for branch in _branches(annotation):
        if typing.get_origin(branch) in (dict, typing.Mapping) and len(typing.get_args(branch)) == 2:
            return typing.get_args(branch)[1]
    return None


def _sequence_items(annotation: Any) -> Any | None:
    for branch in _branches(annotation):
        if typing.get_origin(branch) in (list, set, frozenset, typing.Sequence) and typing.get_args(branch):
            return typing.get_args(branch)[0]
    return None
