"""Published versions are immutable: compare the schemas folder with a git base (``git show REF:path``)."""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

from toolkit.compat.findings import Finding, Severity
from toolkit.errors import SchemaFileError
from toolkit.layout import SCHEMA_VERSION, canonical_json
from toolkit.references import REFERENCES, SchemaReference

_VERSION_FILE = re.compile(rf"^(?P<subject>[^/]+)/(?P<version>{SCHEMA_VERSION.pattern})\.(json|avsc)$")


@dataclass(frozen=True)
class Base:
    ref: str | None  # None: not a git repository, immutability not checked
    note: str


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def resolve_base(schemas_dir: Path, requested: str | None = None) -> Base:
    """The commit to compare with: ``requested``, else the merge base with main (or origin/main),
    else HEAD."""
    cwd = schemas_dir if schemas_dir.is_dir() else Path.cwd()
    if _git(cwd, "rev-parse", "--is-inside-work-tree").returncode != 0:
        return Base(None, "not a git work tree: published versions were not checked for edits")
    if requested:
        found = _git(cwd, "rev-parse", "--verify", "--quiet", f"{requested}^{{commit}}")
        if found.returncode != 0:
            return Base(None, f"--base {requested}: no such commit")
        return Base(found.stdout.strip(), f"compared with --base {requested}")
    head = _git(cwd, "rev-parse", "--verify", "--quiet", "HEAD").stdout.strip()
    if not head:
        return Base(None, "no commits yet: nothing is published")
    for branch in ("main", "origin/main"):
        merge_base = _git(cwd, "merge-base", "HEAD", branch)
        if merge_base.returncode == 0:
            ref = merge_base.stdout.strip()
            if ref == head:
                return Base(
                    head,
                    f"the merge base with {branch} is HEAD itself (on {branch}, or nothing "
                    "committed since): compared with HEAD, i.e. uncommitted changes only",
                )
            return Base(ref, f"compared with the merge base with {branch} ({ref[:12]})")
    return Base(head, "no main branch found: compared with HEAD (uncommitted changes only)")


def check_immutable(schemas_dir: Path, base: Base) -> list[Finding]:
    """An edited or deleted version file that exists at the base is an error (whitespace-only: a warning)."""
    if base.ref is None:
        return []
    top = Path(_git(schemas_dir, "rev-parse", "--show-toplevel").stdout.strip())
    prefix = schemas_dir.resolve().relative_to(top.resolve()).as_posix()
    listed = _git(top, "ls-tree", "-r", "--name-only", base.ref, "--", prefix)
    findings = []
    published_versions: dict[str, set[int]] = {}
    for repo_path in listed.stdout.splitlines():
        relative = repo_path[len(prefix) + 1 :] if prefix not in ("", ".") else repo_path
        match = _VERSION_FILE.match(relative)
        if match is None:
            continue
        subject, version = match["subject"], int(match["version"])
        published_versions.setdefault(subject, set()).add(version)
        published = _git(top, "show", f"{base.ref}:{repo_path}").stdout
        local = top / repo_path
        short = base.ref[:12]
        if not local.exists():
            findings.append(
                Finding(
                    subject,
                    "VERSION_DELETED",
                    f"v{version} was published (it exists at {short}) and has been deleted; "
                    "consumers may still receive records that name it. Restore the file.",
                    file=repo_path,
                    reader_version=version,
                )
            )
            continue
        current = local.read_text(encoding="utf-8")
        if current == published:
            continue
        diff = "".join(
            difflib.unified_diff(
                published.splitlines(keepends=True),
                current.splitlines(keepends=True),
                fromfile=f"a/{repo_path} ({short})",
                tofile=f"b/{repo_path}",
            )
        )
        if _same_json(published, current):
            findings.append(
                Finding(
                    subject,
                    "VERSION_REFORMATTED",
                    f"v{version} was published and its text changed, but not its meaning "
                    "(same JSON); prefer restoring the published bytes.",
                    severity=Severity.WARNING,
                    file=repo_path,
                    reader_version=version,
                    detail=diff,
                )
            )
            continue
        findings.append(
            Finding(
                subject,
                "VERSION_EDITED",
                f"v{version} was published (it exists at {short}) and has been edited; a "
                f"published "
                "version is immutable: restore it and add the change as a new version file "
                "(the next number) instead.",
                file=repo_path,
                reader_version=version,
                detail=diff,
            )
        )
    for subject, versions in sorted(published_versions.items()):
        toml_path = f"{prefix}/{subject}/subject.toml" if prefix not in ("", ".") else f"{subject}/subject.toml"
        findings += _references_edited(top, base.ref, subject, toml_path, versions)
    return findings


def _references_edited(top: Path, ref: str, subject: str, toml_path: str, versions: set[int]) -> list[Finding]:
    """A published version's references are part of it (the registry keeps them with the schema): changing
    them in subject.toml changes what the version means, so it is an edit like one of the version file."""
    published = _git(top, "show", f"{ref}:{toml_path}")
    before = _toml_references(top / toml_path, published.stdout if published.returncode == 0 else "")
    local = top / toml_path
    try:
        after = _toml_references(local, local.read_text(encoding="utf-8") if local.exists() else "")
    except (OSError, UnicodeDecodeError):
        after = None
    if before is None or after is None:  # an invalid subject.toml is reported by the layout check
        return []
    findings = []
    for version in sorted(versions):
        old, new = before.get(version, ()), after.get(version, ())
        if _sorted(old) == _sorted(new):
            continue
        findings.append(
            Finding(
                subject,
                "VERSION_REFERENCES_EDITED",
                f"v{version} was published (it exists at {ref[:12]}) and its references in {toml_path} "
                f"changed from {_describe(old)} to {_describe(new)}; a published version's references are "
                f"part of it and immutable: restore references.{version} and add the change as a new "
                "version (the next number) with the references you want.",
                file=toml_path,
                path=f"references.{version}",
                reader_version=version,
            )
        )
    return findings


def _toml_references(path: Path, text: str) -> dict[int, tuple[SchemaReference, ...]] | None:
    """The ``[references]`` of a subject.toml's text (``{}`` for none), None when it cannot be read."""
    from toolkit.layout import _references

    try:
        return _references(path, tomllib.loads(text).get(REFERENCES))
    except (tomllib.TOMLDecodeError, SchemaFileError):
        return None


def _sorted(references: tuple[SchemaReference, ...]) -> list[tuple[str, str, int]]:
    return sorted((r.name, r.subject, r.version) for r in references)


def _describe(references: tuple[SchemaReference, ...]) -> str:
    if not references:
        return "none"
    return ", ".join(f"{r.name} = {r.subject}/{r.version}" for r in references)


def _same_json(a: str, b: str) -> bool:
    try:
        return canonical_json(json.loads(a)) == canonical_json(json.loads(b))
    except (ValueError, RecursionError):
        return False
