"""toolkit._lazy: a deferred module behaves as the module itself, to every caller and every thread."""

from __future__ import annotations

import builtins
import importlib
import sys
import threading
import types
from pathlib import Path

import pytest

from toolkit import _lazy

CODE = """
import builtins
import time

__version__ = "1.0"
__all__ = ["f", "g"]
builtins._epistle_lazy_test["started"].set()
if builtins._epistle_lazy_test["fail"]:
    raise RuntimeError("the module's code failed")


def f():
    return READY


def g():
    return "g"


time.sleep(builtins._epistle_lazy_test["slow_s"])
READY = "ready"
"""


@pytest.fixture
def deferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh module of CODE, imported with its ``f`` deferred; ``state`` steers its code."""
    name = f"epistle_lazy_probe_{id(tmp_path)}"
    (tmp_path / f"{name}.py").write_text(CODE, encoding="utf-8")
    state = {"started": threading.Event(), "fail": False, "slow_s": 0.0}
    monkeypatch.setattr(builtins, "_epistle_lazy_test", state, raising=False)
    monkeypatch.setitem(_lazy.DEFERRED, name, ("f",))
    monkeypatch.syspath_prepend(str(tmp_path))
    _lazy.defer_format_modules()
    module = importlib.import_module(name)
    assert type(module) is _lazy._Shell and not state["started"].is_set()
    stand_in = module.f  # what jsonschema holds after ``from module import f``
    yield module, stand_in, state
    sys.modules.pop(name, None)


def test_missing_dunders_load_the_module(deferred) -> None:
    module, _, _ = deferred
    assert module.__version__ == "1.0"
    assert type(module) is types.ModuleType


def test_star_import_sees_the_real_names(deferred) -> None:
    module, _, _ = deferred
    names: dict = {}
    exec(f"from {module.__name__} import *", names)  # noqa: S102
    assert names["g"]() == "g" and names["f"]() == "ready"


def test_probes_do_not_load_the_module(deferred) -> None:
    module, _, state = deferred
    for probe in ("__path__", "__wrapped__"):
        assert not hasattr(module, probe)
    assert not state["started"].is_set()


def test_other_threads_wait_for_the_module_to_finish_loading(deferred) -> None:
    module, stand_in, state = deferred
    state["slow_s"] = 0.3
    loader = threading.Thread(target=stand_in)
    loader.start()
    assert state["started"].wait(5)
    assert type(module) is _lazy._Shell  # still loading: not yet a plain module
    assert module.READY == "ready"  # waited for the code to finish, no AttributeError
    loader.join(5)


def test_a_failed_load_is_tried_again_on_next_use(deferred) -> None:
    module, stand_in, state = deferred
    state["fail"] = True
    with pytest.raises(RuntimeError, match="failed"):
        stand_in()
    assert type(module) is _lazy._Shell and sys.modules[module.__name__] is module
    state["fail"] = False
    assert stand_in() == "ready"
    assert module.f() == "ready" and module.__version__ == "1.0"
