"""The dataset commands: `vlprompt data check` and `vlprompt world export`."""
from __future__ import annotations

from vlprompt.cli.overrides import parse_overrides


def cmd_data(args) -> int:
    from vlprompt.data.check import check_dataset

    report = check_dataset(args.name, args.root, **parse_overrides(args.options))
    print(report.format())
    return 0 if report.ok else 1


def cmd_world_export(args) -> int:
    from vlprompt.data.world.export import export_world_task

    root = export_world_task(args.task, args.out, fmt=args.format, per_class=args.per_class, seed=args.seed,
                             image_size=args.image_size, image_format=args.image_format,
                             overwrite=args.overwrite)
    print(f"wrote world task '{args.task}' in the {args.format} layout under {root}")
    print(f"read it back with: {_read_back(args.task, args.format, root)}")
    return 0


def _read_back(task: str, fmt: str, root) -> str:
    """The dataset settings that read an export back (what a newcomer types next)."""
    if fmt == "vtab":
        name = task if task.startswith("world-") else f"world-{task}"
        return f"dataset=vtab root={root} dataset_options.task={name} dataset_options.classnames=classnames.txt"
    return f"dataset={fmt} root={root}"
