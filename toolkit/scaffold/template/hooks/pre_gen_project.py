"""Refuse invalid answers before any file is written (the same rules as `epistle new`).

Cookiecutter renders this script with Jinja first: the check itself runs then, through the template's
``scaffold_problems`` filter (toolkit/scaffold/rules.py); this script only reports. On a non-zero exit
cookiecutter removes the project folder it had just created.
"""

import json
import os
import sys

try:  # cookiecutter runs a rendered copy of this script from a temporary file it never removes
    os.unlink(__file__)
except OSError:
    pass

PROBLEMS = json.loads({{ cookiecutter | scaffold_problems | jsonify | jsonify }})

if PROBLEMS:
    print("error: invalid answers, nothing was generated:", file=sys.stderr)
    for problem in PROBLEMS:
        print(f"  {problem}", file=sys.stderr)
    sys.exit(1)
