"""Argument checks for the public entry points: bad input raises InvalidArgument (a ValueError) or
InvalidArgumentType (also a TypeError), naming the argument and what to pass instead, never a bare
built-in error from deep inside (see the contract in toolkit/errors.py)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from toolkit.errors import InvalidArgument, InvalidArgumentType


def _got(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:120]


def path(name: str, value: Any) -> Path:
    """A ``str`` or ``os.PathLike`` as a Path."""
    if isinstance(value, bool) or not isinstance(value, str | os.PathLike):
        raise InvalidArgumentType(f"{name}: expected a path (str or pathlib.Path), got {_got(value)}", argument=name)
    result = Path(value)
    if "\x00" in str(result):
        raise InvalidArgument(f"{name}: {value!r} is not a usable path (NUL character)", argument=name)
    return result


def text(name: str, value: Any, *, empty: bool = True) -> str:
    """A ``str`` (non-empty unless ``empty``)."""
    if not isinstance(value, str):
        raise InvalidArgumentType(f"{name}: expected a str, got {_got(value)}", argument=name)
    if not empty and not value.strip():
        raise InvalidArgument(f"{name}: must not be empty", argument=name)
    return value


def integer(name: str, value: Any, *, low: float | None = None, high: float | None = None, fix: str = "") -> int:
    """An ``int`` (not a bool) within ``low``..``high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentType(f"{name}: expected an int, got {_got(value)}", argument=name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f"from {low} to {high}"
            if low is not None and high is not None
            else (f"at least {low}" if low is not None else f"at most {high}")
        )
        raise InvalidArgument(f"{name}: {value} is out of range; use an integer {bounds}{fix}", argument=name)
    return value


def number(name: str, value: Any, *, low: float | None = None, positive: bool = False) -> float:
    """A finite ``int`` or ``float`` (not a bool), above 0 with ``positive``, else at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentType(f"{name}: expected a number, got {_got(value)}", argument=name)
    if not math.isfinite(value) or (positive and value <= 0) or (low is not None and value < low):
        need = (
            "a number above 0" if positive else f"a number of at least {low}" if low is not None else "a finite number"
        )
        raise InvalidArgument(f"{name}: {value!r} is out of range; use {need}", argument=name)
    return float(value)


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentType(f"{name}: expected True or False, got {_got(value)}", argument=name)
    return value


def instance(name: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` when it is a ``kind``; ``what`` says what to pass in the message."""
    if not isinstance(value, kind):
        raise InvalidArgumentType(f"{name}: expected {what}, got {_got(value)}", argument=name)
    return value


def has_methods(name: str, value: Any, *methods: str, what: str) -> Any:
    """``value`` when it has every one of ``methods`` (a duck-typed protocol)."""
    if not all(callable(getattr(value, method, None)) for method in methods):
        raise InvalidArgumentType(
            f"{name}: expected {what} (with {', '.join(methods)}), got {_got(value)}", argument=name
        )
    return value


def mapping(name: str, value: Any, *, keys: type = str) -> Mapping:
    if not isinstance(value, Mapping) or not all(isinstance(key, keys) for key in value):
        raise InvalidArgumentType(
            f"{name}: expected a dict with {keys.__name__} keys, got {_got(value)}", argument=name
        )
    return value


def bytes_like(name: str, value: Any) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidArgumentType(f"{name}: expected bytes, got {_got(value)}", argument=name)
    return bytes(value)


def not_a_member(cls: type[Enum], value: Any) -> Enum:
    """Use as ``_missing_ = classmethod(not_a_member)`` in a public enum: ``Mode("bad")`` raises
    InvalidArgument (still a ValueError) listing the members."""
    members = ", ".join(str(member.value) for member in cls)
    raise InvalidArgument(f"{value!r} is not a valid {cls.__name__}; use one of {members}", argument=cls.__name__)


def subject_version(subject: Any, version: Any) -> None:
    """A registry lookup key: a subject name and a version (an int, or a str such as "latest")."""
    text("subject", subject)
    if isinstance(version, bool) or not isinstance(version, int | str):
        raise InvalidArgumentType(
            f'version: expected a positive int or "latest", got {_got(version)}', argument="version"
        )


def cached_registry_options(registry: Any, compile: Any, latest_ttl_s: Any, not_found_ttl_s: Any) -> None:
    has_methods("registry", registry, "get", "latest", "subjects", "versions", what="a SchemaRegistry")
    if compile is not None and not callable(compile):
        raise InvalidArgumentType(
            f"compile: expected a function of a RegisteredSchema, got {_got(compile)}", argument="compile"
        )
    number("latest_ttl_s", latest_ttl_s, low=0)
    number("not_found_ttl_s", not_found_ttl_s, low=0)


def replay_options(config: Any, topic: Any, keep_timestamp: Any, timeout_s: Any) -> None:
    mapping("config", config)
    if topic is not None:
        text("topic", topic, empty=False)
    boolean("keep_timestamp", keep_timestamp)
    number("timeout_s", timeout_s, positive=True)
