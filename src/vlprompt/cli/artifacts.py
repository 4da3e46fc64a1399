"""The command line's artifact commands: predict, export and serve-batch, what a user does with a trained prompt
folder (part of the CLI layer; cli/parser.py adds them to its parser)."""
from __future__ import annotations

from vlprompt.core.errors import ConfigError


def _classnames_option(value: str | None) -> list[str] | None:
    """--classnames: a comma-separated list, or a text file with one class name per line."""
    if not value:
        return None
    from pathlib import Path

    if Path(value).is_file():
        return [line.strip() for line in Path(value).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [name.strip() for name in value.split(",") if name.strip()]


def _backbone_option(name: str | None):
    if not name:
        return None
    from vlprompt.backbones.registry import create_backbone

    return create_backbone(name)


def cmd_predict(args) -> int:
    from vlprompt.artifacts.pretrained import from_pretrained
    from vlprompt.eval.image_predict import predict_images
    from vlprompt.serve.inference import collect_inputs, format_predictions, write_predictions

    method = from_pretrained(args.run_dir, backbone=_backbone_option(args.backbone),
                             classnames=_classnames_option(args.classnames), device=args.device)
    inputs = collect_inputs(args.inputs)
    if method.labels.task_type == "segmentation":
        return _predict_masks(method, inputs, args)
    records = predict_images(method, inputs, topk=args.topk, batch_size=args.batch_size, progress=True)
    if args.output:
        print(f"wrote {len(records)} predictions to {write_predictions(records, args.output)}")
    else:
        print(format_predictions(records))
    return 0


def _predict_masks(method, inputs, args) -> int:
    """A segmentation run: mask PNGs and colour overlays beside the images (or under --output, a folder)."""
    from pathlib import Path

    from vlprompt.eval.mask_outputs import write_mask_predictions

    source = Path(args.inputs)
    base = source if source.is_dir() else source.parent
    records = write_mask_predictions(method, inputs, out_dir=args.output, base=base, mode=args.inference,
                                     stride=args.stride, device=args.device)
    where = args.output or "beside the images"
    print(f"wrote {len(records)} masks and overlays ({where})")
    return 0


def cmd_export(args) -> int:
    from vlprompt.artifacts.pretrained import from_pretrained
    from vlprompt.serve.export import export_classifier

    method = from_pretrained(args.run_dir, backbone=_backbone_option(args.backbone))
    out = export_classifier(method, args.out, source=str(args.run_dir))
    print(f"wrote the {len(method.labels.classnames)}-class classifier of '{args.run_dir}' to {out} "
          "(classifier.safetensors + classifier.json)")
    return 0


def cmd_serve_batch(args) -> int:
    from pathlib import Path

    from vlprompt.serve.inference import format_predictions, read_csv_rows, write_predictions
    from vlprompt.serve.serving import MultiTaskPredictor

    tasks = {}
    for item in args.task:
        name, separator, folder = item.partition("=")
        if not separator or not name or not folder:
            raise ConfigError(f"--task '{item}' is not of the form NAME=RUN_FOLDER (e.g. --task paint=runs/my_coop).")
        tasks[name] = folder
    predictor = MultiTaskPredictor(tasks, backbone=_backbone_option(args.backbone), device=args.device)
    rows = read_csv_rows(Path(args.requests), ("task",))
    records = predictor.predict_images([path for path, _ in rows], [extra["task"] for _, extra in rows],
                                       topk=args.topk, batch_size=args.batch_size, progress=True)
    if args.output:
        print(f"wrote {len(records)} predictions to {write_predictions(records, args.output)}")
    else:
        print(format_predictions(records))
    return 0


def add_artifact_commands(sub) -> None:
    """predict / export / serve-batch: what a user does with a trained prompt folder."""
    p = sub.add_parser("predict", help="top-k labels for an image, a folder or a CSV of paths with a run folder")
    p.add_argument("run_dir", help="a run folder of 'vlprompt train' (or a save_pretrained folder)")
    p.add_argument("inputs", help="an image file, a folder of images (recursive) or a CSV with a 'path' column")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--output", help="write a .csv or .json file instead of printing (segmentation runs: a folder "
                                    "for the masks and overlays instead of beside the images)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--inference", default="whole", choices=["whole", "slide"],
                   help="segmentation runs: the whole image at the input size, or sliding windows")
    p.add_argument("--stride", type=int, help="segmentation sliding-window stride in pixels (default 2/3 of the "
                                              "input size)")
    p.add_argument("--classnames", help="other class names (comma-separated or a file, one per line) for "
                                        "open-vocabulary prompts (CoOp-family shared context, zero-shot)")
    p.add_argument("--backbone", help="load this backbone name instead of the stored one (e.g. the weights moved); "
                                      "its weights hash must match")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write an image-independent head (class features + logit scale) for serving "
                                      "with the plain backbone")
    p.add_argument("run_dir")
    p.add_argument("--format", default="classifier", choices=["classifier"])
    p.add_argument("--out", required=True, help="folder for classifier.safetensors + classifier.json")
    p.add_argument("--backbone", help="load this backbone name instead of the stored one")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve-batch", help="one frozen backbone, several prompt folders, a CSV of (path, task) "
                                           "requests scored in shared batches")
    p.add_argument("requests", help="a CSV with columns path,task (paths relative to the CSV's folder)")
    p.add_argument("--task", action="append", required=True, help="NAME=RUN_FOLDER, once per task")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--output", help="write a .csv or .json file instead of printing")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: where the backbone is)")
    p.add_argument("--backbone", help="load this backbone name instead of the stored one")
    p.set_defaults(func=cmd_serve_batch)
