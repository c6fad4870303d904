"""Write the per-topic files: a handler, its unit test, an example schema and its subject.toml.

Cookiecutter makes one file per template file; a handler per topic needs one file per answer, so this hook
renders the templates under ``per_topic/`` (beside cookiecutter.json) once for each topic. Runs in the
generated project folder; on a non-zero exit cookiecutter removes that folder.
"""

import json
import os
import sys
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

try:  # cookiecutter runs a rendered copy of this script from a temporary file it never removes
    os.unlink(__file__)
except OSError:
    pass

COOKIECUTTER = json.loads({{ cookiecutter | jsonify | jsonify }})
PLANS = json.loads({{ cookiecutter.topics | topic_plans | jsonify | jsonify }})
TEMPLATES = Path(COOKIECUTTER["_repo_dir"]) / "per_topic"

# template -> path in the project ({package_name} and the plan's fields are filled in)
OUTPUTS = {
    "handler.py.j2": "{package_name}/handlers/{module}.py",
    "test_handler.py.j2": "tests/unit/test_{module}.py",
    "schema.json.j2": "schemas/{schema_name}/1.json",
    "subject.toml.j2": "schemas/{schema_name}/subject.toml",
}


def main() -> None:
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True,
                      autoescape=False)
    for plan in PLANS:
        for template, target in OUTPUTS.items():
            path = Path(target.format(package_name=COOKIECUTTER["package_name"], **plan))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(env.get_template(template).render(cookiecutter=COOKIECUTTER, t=plan, plans=PLANS),
                            encoding="utf-8")


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # report in one line; cookiecutter then removes the half-made project
        print(f"error: writing the per-topic files failed: {exc!r}", file=sys.stderr)
        sys.exit(1)
