"""The world and its shipped backbones, measured: render speed, zero-shot CLIP, and the head-room left for learning.

    python benchmarks/bench_world.py                     # writes benchmarks/results/world.{json,md}

Head-room is what the world is designed for (SPEC section 4): for each claim this measures the gap directly on
frozen features, without any prompt method, so the figures stand apart from the methods they motivate:
- a task in one style the default template does not name (object-neon): default vs style-matched template;
- rare class names: zero-shot on the 4 rarely captioned shapes vs the other 20, and a 16-shot linear probe;
- texture: visible to the image tower but seldom captioned: zero-shot vs a 16-shot linear probe;
- held-out styles (sketch, blueprint): zero-shot and probe collapse.
Linear probes are sklearn logistic regression on L2-normalised features, C picked on the val split.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlprompt.backbones.world import WORLD_MEAN, WORLD_STD, load_world_clip, load_world_mae
from vlprompt.data.world.render import render
from vlprompt.data.world.tasks import WORLD_TASKS, get_world_task, load_world_task
from vlprompt.data.world.vocab import VOCAB


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(WORLD_MEAN).view(1, 3, 1, 1)) / torch.tensor(WORLD_STD).view(1, 3, 1, 1)


@torch.no_grad()
def features(encode, dataset) -> torch.Tensor:
    images = np.stack([np.asarray(dataset.load(s)) for s in dataset.sources])
    return F.normalize(torch.cat([encode(to_tensor(images[i:i + 512])) for i in range(0, len(images), 512)]), dim=-1)


@torch.no_grad()
def text_classifier(model, tokenizer, templates: list[str], classnames: list[str]) -> torch.Tensor:
    """Class text features, averaged over ``templates`` (one template: the plain zero-shot classifier)."""
    per_template = [F.normalize(model.encode_text(tokenizer([t.format(c) for c in classnames])), dim=-1)
                    for t in templates]
    return F.normalize(torch.stack(per_template).mean(0), dim=-1)


def accuracy(pred: torch.Tensor | np.ndarray, labels: list[int], mask: np.ndarray | None = None) -> float:
    hits = np.asarray(pred) == np.asarray(labels)
    return round(float(hits[mask].mean() if mask is not None else hits.mean()), 4)


def linear_probe(train: torch.Tensor, train_y, val: torch.Tensor, val_y, test: torch.Tensor) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    best = None
    for c in (0.1, 1.0, 10.0, 100.0):
        clf = LogisticRegression(C=c, max_iter=3000).fit(train.numpy(), train_y)
        score = (clf.predict(val.numpy()) == np.asarray(val_y)).mean()
        if best is None or score > best[0]:
            best = (score, clf)
    return best[1].predict(test.numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--clip", type=Path, default=None, help="world CLIP folder (default: the shipped one)")
    parser.add_argument("--mae", type=Path, default=None, help="world MAE folder (default: the shipped one)")
    parser.add_argument("--test-per-class", type=int, default=40)
    parser.add_argument("--shots", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    result: dict = {"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}

    task = get_world_task("object")
    start = time.perf_counter()
    for i in range(400):
        render(task.attributes("test", i)[0])
    result["render_images_per_second"] = round(400 / (time.perf_counter() - start))

    model, tokenizer, config = load_world_clip(args.clip)
    result["clip_trained_zero_shot"] = config["world_meta"].get("zero_shot")
    sizes = {"train_per_class": args.shots, "val_per_class": 4, "test_per_class": args.test_per_class}
    zero_shot, probe, feats = {}, {}, {}
    for name in ["object", *[f"object-{s}" for s in VOCAB.styles], "texture", "colour", "position", "count"]:
        data = load_world_task(name, **sizes)
        feats[name] = {split: features(model.encode_image, getattr(data, split)) for split in ("train", "val", "test")}
        classifier = text_classifier(model, tokenizer, data.labels.templates[:1], data.labels.classnames)
        zero_shot[name] = accuracy((feats[name]["test"] @ classifier.t()).argmax(-1), data.test.labels)
        probe[name] = accuracy(linear_probe(feats[name]["train"], data.train.labels, feats[name]["val"],
                                            data.val.labels, feats[name]["test"]), data.test.labels)
    result["clip_zero_shot"] = zero_shot
    result[f"clip_linear_probe_{args.shots}shot"] = probe
    result["chance"] = {name: round(1 / len(WORLD_TASKS[name].classnames), 4) for name in zero_shot}

    # The default template names no style: on object-<style>, does the style's own template group do better?
    matched = {}
    for style in VOCAB.styles:
        name = f"object-{style}"
        data = load_world_task(name, **sizes)
        group = VOCAB.template_groups[style]
        classifier = text_classifier(model, tokenizer, list(group), data.labels.classnames)
        matched[name] = {"default_template": zero_shot[name],
                         "style_group_ensemble": accuracy((feats[name]["test"] @ classifier.t()).argmax(-1),
                                                          data.test.labels)}
    result["clip_style_matched_templates"] = matched

    # Rare class names (seldom captioned): zero-shot and probe, rare vs common classes, on the object task.
    data = load_world_task("object", **sizes)
    rare = np.isin(np.asarray(data.test.labels), [VOCAB.shapes.index(s) for s in VOCAB.rare_shapes])
    classifier = text_classifier(model, tokenizer, data.labels.templates[:1], data.labels.classnames)
    pred = (feats["object"]["test"] @ classifier.t()).argmax(-1)
    probe_pred = linear_probe(feats["object"]["train"], data.train.labels, feats["object"]["val"], data.val.labels,
                              feats["object"]["test"])
    result["clip_rare_class_names"] = {
        "rare_shapes": list(VOCAB.rare_shapes),
        "zero_shot_rare": accuracy(pred, data.test.labels, rare),
        "zero_shot_common": accuracy(pred, data.test.labels, ~rare),
        "probe_rare": accuracy(probe_pred, data.test.labels, rare),
        "probe_common": accuracy(probe_pred, data.test.labels, ~rare),
    }

    mae = load_world_mae(args.mae)
    mae_probe = {}
    for name in ("object", "texture", "object-sketch", "position", "count"):
        data = load_world_task(name, **sizes)
        f = {split: features(mae, getattr(data, split)) for split in ("train", "val", "test")}
        mae_probe[name] = accuracy(linear_probe(f["train"], data.train.labels, f["val"], data.val.labels, f["test"]),
                                   data.test.labels)
    result[f"mae_linear_probe_{args.shots}shot"] = mae_probe

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "world.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# World backbones, measured (benchmarks/bench_world.py)", "",
             f"Render: {result['render_images_per_second']} images/s (one core, 32 px).", "",
             f"| task | chance | CLIP zero-shot | CLIP {args.shots}-shot probe | MAE {args.shots}-shot probe |",
             "| --- | --- | --- | --- | --- |"]
    for name, zs in zero_shot.items():
        mae_cell = f"{mae_probe[name]:.3f}" if name in mae_probe else ""
        lines.append(f"| {name} | {result['chance'][name]:.3f} | {zs:.3f} | {probe[name]:.3f} | {mae_cell} |")
    lines += ["", "| style task | default template | style's own template group |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v['default_template']:.3f} | {v['style_group_ensemble']:.3f} |" for k, v in matched.items()]
    r = result["clip_rare_class_names"]
    rare_line = (f"Rare class names {', '.join(r['rare_shapes'])}: zero-shot {r['zero_shot_rare']:.3f} "
                 f"(common {r['zero_shot_common']:.3f}); {args.shots}-shot probe {r['probe_rare']:.3f} "
                 f"(common {r['probe_common']:.3f}).")
    lines += ["", rare_line]
    (args.out / "world.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
