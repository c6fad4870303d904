"""Time `epistle codegen` on generated schema folders, and the per-body cost of validation.

    .venv/bin/python scripts/codegen_bench.py [--versions 100]

Creates ``--versions`` schema versions in a temporary folder (half JSON Schema, half Avro, each version a
copy of the example schemas/orders/2.json or schemas/shipments/2.avsc with one extra optional field, so
each is as rich as the examples), then times the `epistle codegen` command end to end (a subprocess, as
`make codegen` runs it): cold (empty output), on the unchanged tree, after one schema changed, `--check` on
the unchanged tree, and a cold run on one core (``--jobs 1``) for comparison; then in process, and the
decode of one body per format. Prints wall and CPU (user+sys of the children) seconds; writes nothing
outside the temporary folder. Not a test: no assertions on time.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.codegen import generate_models  # noqa: E402
from toolkit.layout import SchemaFormat  # noqa: E402
from toolkit.registry.base import RegisteredSchema  # noqa: E402
from toolkit.validation import compile_schema  # noqa: E402


def make_schemas(folder: Path, versions: int) -> None:
    orders = json.loads((ROOT / "schemas/orders/2.json").read_text())
    shipments = json.loads((ROOT / "schemas/shipments/2.avsc").read_text())
    json_versions = versions // 2
    for subject, base, count, suffix in (
        ("orders", orders, json_versions, "json"),
        ("shipments", shipments, versions - json_versions, "avsc"),
    ):
        (folder / subject).mkdir(parents=True)
        for version in range(1, count + 1):
            document = copy.deepcopy(base)
            if suffix == "json":
                document["properties"][f"extra{version}"] = {"type": ["string", "null"]}
            else:
                document["fields"].append({"name": f"extra{version}", "type": ["null", "string"], "default": None})
            (folder / subject / f"{version}.{suffix}").write_text(json.dumps(document, indent=2))


def time_command(schemas: Path, out: Path, *options: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one `epistle codegen` subprocess."""
    before = os.times()
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "codegen", "--schemas", str(schemas), "--out", str(out), *options],
        check=True,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    wall = time.perf_counter() - started
    after = os.times()
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def show(label: str, timing: tuple[float, float]) -> None:
    print(f"  {label:<34} {timing[0]:6.2f}s wall {timing[1]:6.2f}s CPU")


def time_scenarios(schemas: Path, out: Path) -> None:
    show("cold (empty output)", time_command(schemas, out))
    show("unchanged tree", time_command(schemas, out))
    show("--check, unchanged tree", time_command(schemas, out, "--check"))
    changed = sorted(schemas.glob("*/1.*"))[0]
    document = json.loads(changed.read_text())
    if "properties" in document:
        document["properties"]["benchChanged"] = {"type": "string"}
    else:
        document["fields"].append({"name": "benchChanged", "type": ["null", "string"], "default": None})
    changed.write_text(json.dumps(document, indent=2))
    show(f"one file changed ({changed.parent.name}/{changed.name})", time_command(schemas, out))
    show(
        "cold, one core (--jobs 1 --force)",
        time_command(schemas, out.with_name(out.name + "-serial"), "--jobs", "1", "--force"),
    )


def time_decode() -> None:
    import fastavro

    for name, version, fmt, suffix, sample in (
        ("orders", 2, SchemaFormat.JSON, "json", "full-with-discount-and-channel"),
        ("shipments", 2, SchemaFormat.AVRO, "avsc", "insured-with-estimated-delivery"),
    ):
        text = (ROOT / "schemas" / name / f"{version}.{suffix}").read_text()
        compiled = compile_schema(RegisteredSchema(name, version, fmt, text))
        body = json.loads((ROOT / "schemas" / name / "samples" / str(version) / "valid" / f"{sample}.json").read_text())
        runs = 2000
        per_call = timeit.timeit(lambda c=compiled, b=body: c.decode(b), number=runs) / runs
        print(f"decode {name}/{version}: {per_call * 1e6:.1f} us per body")
        if fmt == SchemaFormat.AVRO:
            raw = json.dumps(body)

            def read(c=compiled, r=raw):
                return next(fastavro.json_reader(io.StringIO(r), c.parsed))

            reader = timeit.timeit(read, number=runs) / runs
            print(f"  (fastavro.json_reader on the same body, for comparison: {reader * 1e6:.1f} us)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="codegen-bench-") as temp:
        temp_path = Path(temp)
        shutil.copytree(ROOT / "schemas", temp_path / "examples")
        print("examples (schemas/, 4 versions): `epistle codegen`")
        time_scenarios(temp_path / "examples", temp_path / "examples-out")
        make_schemas(temp_path / "schemas", args.versions)
        print(f"{args.versions} versions: `epistle codegen`")
        time_scenarios(temp_path / "schemas", temp_path / "out")
        started = time.perf_counter()
        files = generate_models(temp_path / "schemas", temp_path / "out2")
        elapsed = time.perf_counter() - started
        print(
            f"{args.versions} versions in process, cold: {elapsed:.2f}s "
            f"({elapsed / args.versions * 1000:.0f} ms per version, {len(files)} files)"
        )
    time_decode()


if __name__ == "__main__":
    main()
