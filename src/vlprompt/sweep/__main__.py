"""Worker entry point: ``python -m vlprompt.sweep RUN_FOLDER`` runs that folder's spec (local launcher)."""
from __future__ import annotations

import logging
import os
import sys

from vlprompt.sweep.parent_death import PARENT_ENV, die_with_parent


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m vlprompt.sweep RUN_FOLDER", file=sys.stderr)
        return 2
    if PARENT_ENV in os.environ:  # started by the local launcher: die with it (armed before heavy imports)
        die_with_parent(int(os.environ[PARENT_ENV]))
    from vlprompt.sweep.launchers import EXIT_LOCKED
    from vlprompt.sweep.runner import LOCKED, RAN, execute_run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    status = execute_run(argv[0])
    return 0 if status == RAN else EXIT_LOCKED if status == LOCKED else 1


if __name__ == "__main__":
    sys.exit(main())
