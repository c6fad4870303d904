"""Write the rendered package atomically, or compare it with what is on disk (``--check``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import CodegenError

_IGNORED_DIRS = frozenset({"__pycache__"})


@dataclass(frozen=True)
class Difference:
    path: str  # relative to the output folder
    kind: str  # "stale" (content differs), "missing" (not on disk) or "extra" (on disk, not generated)

    def __str__(self) -> str:
        what = {
            "stale": "is stale (differs from fresh codegen output)",
            "missing": "is missing",
            "extra": "is not produced by codegen (extra file)",
        }[self.kind]
        return f"{self.path} {what}"


def write_package(files: dict[str, str], out: Path | str) -> None:
    """Replace ``out`` with exactly ``files``. The new tree is written beside ``out`` and swapped in, so a
    failure while writing leaves the previous ``out`` as it was.

    Raises:
        CodegenError: the files could not be written or swapped in.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        for relative, text in files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
        _swap(staging, out)
    except OSError as exc:
        raise CodegenError(
            out,
            f"could not write generated models: {exc}",
            fix="check permissions and free space; the previous output is unchanged",
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap(staging: Path, out: Path) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    # Directories cannot be replaced in one rename: move the old tree aside, move the new one in, and
    # put the old one back if the second rename fails.
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rmdir(retired)
    os.rename(out, retired)
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(retired, out)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def diff_package(files: dict[str, str], out: Path | str) -> list[Difference]:
    """Every file of ``out`` that is stale, missing or extra compared with ``files``, sorted by path."""
    out = Path(out)
    on_disk = {}
    if out.is_dir():
        for path in out.rglob("*"):
            relative = path.relative_to(out)
            if path.is_file() and not _IGNORED_DIRS.intersection(relative.parts) and path.suffix != ".pyc":
                on_disk[relative.as_posix()] = path
    differences = []
    for name in sorted(set(files) | set(on_disk)):
        if name not in on_disk:
            differences.append(Difference(name, "missing"))
        elif name not in files:
            differences.append(Difference(name, "extra"))
        elif on_disk[name].read_bytes() != files[name].encode("utf-8"):
            differences.append(Difference(name, "stale"))
    return differences
