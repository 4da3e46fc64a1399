"""The parser of every command and `main`, which runs one and turns errors into exit codes (one paragraph each)."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from vlprompt import __version__
from vlprompt.cli.artifacts import add_artifact_commands
from vlprompt.cli.data import cmd_data, cmd_world_export
from vlprompt.cli.listing import cmd_list
from vlprompt.cli.runs import cmd_demo, cmd_eval, cmd_protocol, cmd_report, cmd_sweep, cmd_train
from vlprompt.core.errors import Preempted, VlpromptError

TRAIN_EPILOG = """\
resume and run folders:
  A run folder is fixed to its config when it starts (config.json holds the fingerprint of every field that
  changes the result). Rerunning the same command into the same --out resumes an interrupted run from its last
  saved state ("resuming from step N"; train.checkpoint_every=N saves every N steps, otherwise at epoch ends)
  and leaves a finished run as it is. Another config is refused with the fields that differ: rerun with the
  same config, choose a new --out, or pass --restart (unfinished run) / --overwrite (finished run). One process
  at a time trains a folder (an OS lock, released when the process dies)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlprompt", description="Prompt learning on frozen vision and vision-language transformers."
    )
    parser.add_argument("--version", action="version", version=f"vlprompt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered names, one per line (or a method's options)")
    p.add_argument("what", choices=["backbones", "methods", "datasets", "presets", "sweeps"])
    p.add_argument("name", nargs="?", help="with 'presets': print what that preset sets, its description and "
                                           "official source; with 'methods': that method's options")
    p.add_argument("--options", metavar="NAME", help="with 'methods': print that method's options, defaults and help")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "train", help="train one run: [CONFIG.yaml] [key=value ...]", epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("items", nargs="*", help="a YAML config and/or overrides such as method=coop train.lr=0.002")
    p.add_argument("--out", help="run folder (default runs/latest)")
    p.add_argument("--restart", action="store_true",
                   help="discard the unfinished run in --out (its resume state and history) and start afresh")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run in --out; the old one stays intact until the new one has finished")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run folder, optionally on another dataset")
    p.add_argument("run_dir")
    p.add_argument("--dataset", help="dataset name (default: the run's own)")
    p.add_argument("--root", help="dataset root (default: the run's own, stored as an absolute path)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--device", help="cpu, cuda, cuda:1, auto (default: the run's train.device)")
    p.add_argument("--batch-size", type=int, help="evaluation batch (default: the run's train.eval_batch_size)")
    p.add_argument("--inference", choices=["whole", "slide"],
                   help="segmentation runs: whole image (default) or sliding windows, at the original size")
    p.add_argument("--stride", type=int, help="segmentation sliding-window stride in pixels (default 2/3 of the "
                                              "input size)")
    p.add_argument("options", nargs="*", help="dataset options as key=value")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="every registered method on the offline world's default few-shot task")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--methods", help="comma-separated subset of methods")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="run a grid of runs from a YAML sweep config (finished runs are skipped)")
    p.add_argument("config", help="a sweep YAML file, or a packaged sweep's name ('vlprompt list sweeps')")
    p.add_argument("overrides", nargs="*", help="overrides of the sweep config as key=value (e.g. train.epochs=2)")
    p.add_argument("--out", required=True, help="sweep folder (one sub-folder per run)")
    p.add_argument("--workers", type=int, default=1,
                   help="local launcher: runs at once, as separate processes (with CUDA, one GPU each)")
    p.add_argument("--launcher", default="local", choices=["local", "ray"],
                   help="where runs execute: this machine, or one Ray task per run (pip install 'vlprompt[ray]')")
    p.add_argument("--address", help="ray launcher: the cluster, 'auto' or HOST:PORT (default: a local Ray)")
    p.add_argument("--cpus-per-run", type=float, default=1, help="ray launcher: CPUs each run's task reserves")
    p.add_argument("--gpus-per-run", type=float, default=0, help="ray launcher: GPUs each run's task reserves")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="markdown + CSV tables and PNG plots from a folder of runs (a table per "
                                       "task and backbone)")
    p.add_argument("runs_dir")
    p.add_argument("--out", help="report folder (default RUNS_DIR/report)")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=cmd_report)

    protocol_help = {
        "fewshot": "few-shot protocol: shots 1/2/4/8/16 x seeds 1/2/3 (mean +- std table)",
        "base2new": "base-to-new protocol: Base / New / HM (HM of the averaged accuracies)",
        "shift": "domain shift: train on a source, test on targets sharing its classes (targets=...)",
        "vtab": "VTAB-1k: select on train800 -> val200, final train800val200 -> test, 5 seeds",
    }
    for name, text in protocol_help.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("items", nargs="*", help="methods=coop,linear dataset=world-object shots=1,16 seeds=1 ...")
        p.add_argument("--out", required=True)
        p.add_argument("--workers", type=int, default=1)
        p.set_defaults(func=cmd_protocol)

    p = sub.add_parser("world", help="the offline world: export a task to disk in a real dataset layout")
    world_sub = p.add_subparsers(dest="world_command", required=True)
    e = world_sub.add_parser("export", help="write a world task as ImageFolder, VTAB-1k, CoOp (split_zhou JSON) or "
                                            "(segmentation) image + mask folder files (real PNGs or JPEGs)")
    e.add_argument("task", help="a world task, e.g. object or world-object (see 'vlprompt list datasets')")
    e.add_argument("--out", required=True)
    e.add_argument("--format", default="imagefolder", choices=["imagefolder", "vtab", "coop", "segfolder"],
                   help="coop: <out>/world_<task>/split_zhou_World<Task>.json + images/<class_name>/, read back "
                        "by dataset=coop; segfolder: images/<split>, masks/<split>, classes.txt (world-seg tasks)")
    e.add_argument("--per-class", type=int, default=16,
                   help="train and test images per class (imagefolder, coop; val gets a quarter); images per split "
                        "(segfolder)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--image-size", type=int, help="resize every image to this many pixels square (e.g. 224)")
    e.add_argument("--image-format", default="png", choices=["png", "jpeg"])
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (refused otherwise)")
    e.set_defaults(func=cmd_world_export)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="validate a dataset on disk before training")
    c.add_argument("name")
    c.add_argument("root")
    c.add_argument("options", nargs="*", help="loader options as key=value")
    c.set_defaults(func=cmd_data)
    add_artifact_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, where it is handled, not in the interpreter's exit
        return code
    except Preempted as error:  # SIGTERM (SLURM, Kubernetes): 128 + 15, as if the signal had ended the process
        print(str(error), file=sys.stderr)
        return 143
    except VlpromptError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        left = INTERRUPTED.get(args.command)
        print(f"interrupted; {left}" if left else "interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_closed()


# What Ctrl-C leaves behind, per command: only the training commands keep a resume state.
_RESUMES = "finished files are kept and rerunning the same command resumes from the last saved state"
INTERRUPTED = {
    "train": _RESUMES,
    "sweep": "finished runs are kept; rerunning the same sweep skips them and resumes the unfinished ones",
    **dict.fromkeys(("fewshot", "base2new", "shift", "vtab"),
                    "finished runs are kept; rerunning the same command skips them and resumes the rest"),
    "demo": "finished runs are kept; rerunning the demo skips them",
    "predict": "no predictions were written (--output is written only once every image is scored)",
    "serve-batch": "no predictions were written (--output is written only once every request is scored)",
}


def _stdout_closed() -> int:
    """The reader of our stdout went away (``vlprompt predict ... | head``): stop quietly, as Unix tools do.

    stdout is pointed at /dev/null so that the interpreter's final flush does not raise a second BrokenPipeError;
    141 is the status a shell reports for a process ended by SIGPIPE (128 + 13)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141
