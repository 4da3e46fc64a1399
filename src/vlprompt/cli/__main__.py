"""``python -m vlprompt.cli`` (what torchrun launches with ``-m``): the console script."""
import sys

from vlprompt.cli.parser import main

sys.exit(main())
