"""The commands that train and score runs: train, eval, demo, sweep, report and the protocol commands."""
from __future__ import annotations

from vlprompt.analysis.markdown import format_table
from vlprompt.cli.overrides import parse_overrides, split_config_and_overrides
from vlprompt.core.config import deep_merge, load_yaml_mapping

RESULT_COLUMNS = ("method", "backbone", "dataset", "shots", "seed", "split", "accuracy", "train_seconds")



def cmd_train(args) -> int:
    from vlprompt.experiment import run_config_from_dict, run_experiment
    from vlprompt.methods import list_methods

    list_methods()  # import every method module so names resolve
    config_path, overrides = split_config_and_overrides(args.items)
    values = load_yaml_mapping(config_path) if config_path else {}
    values = deep_merge(values, parse_overrides(overrides))
    if args.out:
        values["out"] = args.out
    values.setdefault("out", "runs/latest")
    config = run_config_from_dict(values)
    from vlprompt.artifacts.run_dir import RunDir
    from vlprompt.core.distributed import is_main_process

    if config.preset and is_main_process():
        print(_preset_note(values))

    run_dir = RunDir(config.out)
    finished_before = run_dir.is_finished() and not args.overwrite
    records = run_experiment(config, restart=args.restart, overwrite=args.overwrite)
    if is_main_process():  # under torchrun every rank returns the same records; one prints them
        print(format_table(records, result_columns(records, RESULT_COLUMNS)))
        print(f"\n{_written(run_dir, finished_before, records)}")
    return 0


def _preset_note(values: dict) -> str:
    """Which values the preset set and which of them the user's own keys replaced, before training starts."""
    import textwrap

    from vlprompt.presets import applied_preset_values

    applied, replaced = applied_preset_values(values)
    text = f"preset {values['preset']} applied: " + ", ".join(f"{k}={v!r}" for k, v in applied.items())
    if replaced:
        text += "; your values replaced: " + ", ".join(f"{k}={v!r}" for k, v in replaced.items())
    return textwrap.fill(text + f" ('vlprompt list presets {values['preset']}' describes it)", 120,
                         subsequent_indent="  ")


def _written(run_dir, finished_before: bool, records: list[dict]) -> str:
    """What the run folder holds now, said truthfully (no tensors is said as such)."""
    if finished_before:
        return f"nothing to do: {run_dir.path} already holds this run, finished with the same config"
    from vlprompt.artifacts.checkpoint import read_prompt_meta

    shapes = read_prompt_meta(run_dir.path).get("shapes", {}) if run_dir.prompts_meta.exists() else {}
    names = [p.name for p in (run_dir.results, run_dir.config, run_dir.metrics, run_dir.prompts) if p.exists()]
    note = ""
    if not shapes:
        note = " (the method has no trained tensors: its prompt checkpoint records the method only)"
    elif records and records[0].get("steps") == 0:
        note = " (no training step ran: the prompt checkpoint holds the initial values)"
    return f"wrote {', '.join(names)} to {run_dir.path}{note}"


def result_columns(records: list[dict], columns: tuple[str, ...]) -> tuple[str, ...]:
    """Segmentation records show mIoU, mAcc and aAcc where classification ones show accuracy."""
    if not any(r.get("task_type") == "segmentation" for r in records):
        return columns
    at = columns.index("accuracy")
    return (*columns[:at], "mIoU", "mAcc", "aAcc", *columns[at + 1 :])


def cmd_eval(args) -> int:
    from vlprompt.evaluate_run import evaluate_run

    records = evaluate_run(args.run_dir, dataset=args.dataset, root=args.root, split=args.split,
                           options=parse_overrides(args.options), device=args.device, batch_size=args.batch_size,
                           inference=args.inference, stride=args.stride)
    print(format_table(records, result_columns(records, ("method", "backbone", "dataset", "split", "accuracy"))))
    return 0


def cmd_demo(args) -> int:
    from vlprompt.demo import run_demo

    run_demo(args.out, methods=args.methods.split(",") if args.methods else None)
    return 0


def cmd_sweep(args) -> int:
    from vlprompt.sweep import create_launcher, format_summary, load_sweep_config, run_sweep

    config = load_sweep_config(args.config, parse_overrides(args.overrides))
    launcher = create_launcher(args.launcher, args.workers, args.address, args.cpus_per_run, args.gpus_per_run)
    summary = run_sweep(config, args.out, workers=args.workers, launcher=launcher)
    print(format_summary(summary))
    return 1 if summary["failed"] else 0


def cmd_report(args) -> int:
    from vlprompt.analysis.report import write_report

    written = write_report(args.runs_dir, args.out, plots=not args.no_plots)
    print(written["report.md"].read_text(encoding="utf-8"))
    print(f"wrote {len(written)} files to {written['report.md'].parent}")
    return 0


def cmd_protocol(args) -> int:
    from vlprompt.sweep.protocols import format_summary, run_protocol

    summary, written = run_protocol(args.command, parse_overrides(args.items), args.out, workers=args.workers)
    print(format_summary(summary))
    print(written["report.md"].read_text(encoding="utf-8"))
    return 1 if summary["failed"] else 0
