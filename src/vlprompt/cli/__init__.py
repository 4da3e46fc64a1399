"""The command line: YAML + key=value overrides -> dataclasses -> library calls; the library never imports it.

``parser`` builds the argument parser and runs a command; one module per command group holds the commands:
``runs`` (train, eval, demo, sweep, report, protocols), ``data`` (data check, world export), ``listing`` (list),
``artifacts`` (predict, serve-batch, export). ``main`` is the console script's entry point.
"""
from vlprompt.cli.parser import main

__all__ = ["main"]
