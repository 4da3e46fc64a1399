"""`vlprompt list`: registered names (backbones, methods, datasets, presets, sweeps), a preset's values, and a
method's options read from its config dataclass's field metadata."""
from __future__ import annotations

from vlprompt.core.errors import ConfigError


def format_method_options(name: str) -> str:
    """A method's options (its config dataclass's fields) with defaults and help, and its training defaults."""
    import dataclasses
    import textwrap

    from vlprompt.core.config import describe_options
    from vlprompt.methods import METHODS, import_all

    import_all()
    cls = METHODS.get(name)
    options = describe_options(cls.config_class)
    intro = (f"Options of method '{name}' ({cls.config_class.__name__}): set them as method_options.NAME=VALUE "
             "on the command line or under method_options: in a YAML config.")
    lines = [intro]
    if not options:
        lines.append(f"'{name}' has no options of its own.")
    for option in options:
        default = "(required)" if option.default is dataclasses.MISSING else f"= {option.default!r}"
        lines.append(f"\n  {option.name}: {option.type} {default}")
        text = option.help + (f" ({option.constraint()})" if option.constraint() else "")
        lines += textwrap.wrap(text, 100, initial_indent=" " * 6, subsequent_indent=" " * 6, break_on_hyphens=False)
    if cls.train_defaults:
        settings = ", ".join(f"{key}={value!r}" for key, value in sorted(cls.train_defaults.items()))
        lines.append(f"\nRecommended training settings (train.NAME=VALUE overrides them): {settings}")
    return "\n".join(lines)


def cmd_list(args) -> int:
    if args.name is not None:
        if args.what == "presets":
            from vlprompt.presets import describe_preset

            print(describe_preset(args.name))
            return 0
        if args.what != "methods":
            raise ConfigError(f"'vlprompt list {args.what}' takes no name; a name describes a preset ('list presets "
                              "NAME') or a method's options ('list methods NAME').")
        args.options = args.name
    if args.options is not None:
        if args.what != "methods":
            raise ConfigError(f"--options describes a method; use 'vlprompt list methods --options NAME' "
                              f"(not 'list {args.what}').")
        print(format_method_options(args.options))
        return 0
    if args.what == "backbones":
        from vlprompt.backbones.registry import list_backbones

        names = list_backbones()
    elif args.what == "methods":
        from vlprompt.methods import list_methods

        names = list_methods()
    elif args.what == "presets":
        from vlprompt.presets import list_presets

        names = list_presets()
    elif args.what == "sweeps":
        from vlprompt.sweep.config import list_sweeps

        names = list_sweeps()
    else:
        from vlprompt.data.registry import list_datasets

        names = list_datasets()
    print("\n".join(names))
    return 0
