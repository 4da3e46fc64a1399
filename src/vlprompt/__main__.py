"""``python -m vlprompt``: the console script."""
import sys

from vlprompt.cli.parser import main

sys.exit(main())
