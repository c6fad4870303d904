"""``python -m {{ cookiecutter.package_name }}``: consume until SIGTERM/SIGINT, then finish, commit and close."""

from __future__ import annotations

import asyncio
import logging
import sys

from toolkit import EpistleError

from {{ cookiecutter.package_name }}.app import build_consumer


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        consumer = build_consumer()
        asyncio.run(consumer.start(handle_signals=True))
    except EpistleError as exc:  # bad settings, or the consumer stopped on a failure: one clear line
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
