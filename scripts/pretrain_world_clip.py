"""Train the shipped world CLIP (``world:clip``) from a seed, on CPU.

Two stages, because contrastive training from scratch on the world learns colour and style long before shape:
1. the image tower alone, supervised on shape, colour and style labels (never texture, size, position or count:
   those are left for prompt learning to find);
2. the text tower aligned to the locked image tower (LiT) with a contrastive loss on cached image features.

    python scripts/pretrain_world_clip.py            # writes src/vlprompt/assets/world/clip/

The shipped file took 38 minutes with the defaults (seed 0) on 2 shared CPU cores; the run's arguments, losses
and zero-shot accuracies are recorded under "world_meta" in its open_clip_config.json.

Writes fp16 weights with a sparse token embedding, the config, and the measured zero-shot accuracies.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlprompt.backbones.world import (
    CLIP_CONFIG,
    build_world_clip,
    load_world_clip,
    save_world_clip,
    world_clip_tokenizer,
)
from vlprompt.backbones.world import (
    world_images_to_tensor as to_tensor,
)
from vlprompt.data.world.pretrain import pretraining_pool
from vlprompt.data.world.tasks import WORLD_TASKS, load_world_task
from vlprompt.data.world.vocab import VOCAB

log = logging.getLogger("pretrain_world_clip")


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_image_tower(model, pool, args) -> dict:
    visual = model.visual
    embed = CLIP_CONFIG["model_cfg"]["embed_dim"]
    heads = torch.nn.ModuleDict({
        "shape": torch.nn.Linear(embed, len(VOCAB.shapes)),
        "colour": torch.nn.Linear(embed, len(VOCAB.colours)),
        "style": torch.nn.Linear(embed, len(VOCAB.seen_styles)),
    })
    params = list(visual.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=args.image_lr, weight_decay=0.05)
    n = len(pool.images)
    steps = args.image_epochs * n // args.batch
    gen = torch.Generator().manual_seed(args.seed)
    labels = {k: torch.from_numpy(getattr(pool, k)) for k in heads}
    visual.train()
    start, step, history = time.time(), 0, []
    while step < steps:
        for idx in torch.randperm(n, generator=gen).split(args.batch):
            if step >= steps or len(idx) < args.batch:
                break
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, steps, args.image_lr, 200)
            x = to_tensor(pool.images[idx.numpy()])
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                feats = visual(x)
            feats = feats.float()
            losses = {}
            for name, head in heads.items():
                y = labels[name][idx]
                keep = y >= 0
                losses[name] = F.cross_entropy(head(feats[keep]), y[keep])
            loss = losses["shape"] + 0.5 * losses["colour"] + 0.5 * losses["style"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if step % 50 == 0 or step == steps:
                with torch.no_grad():
                    y = labels["shape"][idx]
                    keep = y >= 0
                    acc = (heads["shape"](feats[keep]).argmax(-1) == y[keep]).float().mean().item()
                row = {"step": step, "loss": round(loss.item(), 4), "shape_acc": round(acc, 3),
                       "minutes": round((time.time() - start) / 60, 2)}
                history.append(row)
                log.info("image %s", row)
    visual.eval()
    return {"steps": steps, "minutes": round((time.time() - start) / 60, 2), "history": history[-5:]}


@torch.no_grad()
def image_features(visual, images: np.ndarray, batch: int = 1024) -> torch.Tensor:
    feats = [visual(to_tensor(images[i:i + batch])) for i in range(0, len(images), batch)]
    return F.normalize(torch.cat(feats), dim=-1)


def encode_text_truncated(model, ids: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on the ids cut after the last end-of-text token: equal, as attention is causal."""
    length = int(ids.argmax(-1).max()) + 1
    ids = ids[:, :length]
    x = model.token_embedding(ids) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    return x[torch.arange(len(ids)), ids.argmax(-1)] @ model.text_projection


def train_text_tower(model, pool, tokenizer, args) -> dict:
    visual_state = {k: v.to(torch.float16).float() for k, v in model.visual.state_dict().items()}
    model.visual.load_state_dict(visual_state)  # align the text tower to the image tower as it will be shipped
    model.visual.requires_grad_(False)
    t0 = time.time()
    feats = image_features(model.visual, pool.images)
    log.info("cached %d image features in %.1f min", len(feats), (time.time() - t0) / 60)
    per_image = len(pool.captions[0])
    flat = [c for caps in pool.captions for c in caps]
    tokens = tokenizer(flat).view(len(pool.captions), per_image, -1)
    text_params = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
    opt = torch.optim.AdamW(
        [{"params": [p for p in text_params if p.ndim >= 2], "weight_decay": 0.05},
         {"params": [p for p in text_params if p.ndim < 2], "weight_decay": 0.0}],
        lr=args.text_lr,
    )
    n = len(feats)
    steps = args.text_epochs * n // args.text_batch
    gen = torch.Generator().manual_seed(args.seed + 1)
    start, step, history = time.time(), 0, []
    while step < steps:
        for idx in torch.randperm(n, generator=gen).split(args.text_batch):
            if step >= steps or len(idx) < args.text_batch:
                break
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, steps, args.text_lr, 100)
            which = torch.randint(per_image, (len(idx),), generator=gen)
            ids = tokens[idx, which]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                text = encode_text_truncated(model, ids)
            text = F.normalize(text.float(), dim=-1)
            logits = model.logit_scale.exp() * feats[idx] @ text.t()
            target = torch.arange(len(idx))
            loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(text_params, 1.0)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            if step % 50 == 0 or step == steps:
                row = {"step": step, "loss": round(loss.item(), 4), "scale": round(model.logit_scale.exp().item(), 1),
                       "minutes": round((time.time() - start) / 60, 2)}
                history.append(row)
                log.info("text %s", row)
    return {"steps": steps, "minutes": round((time.time() - start) / 60, 2), "history": history[-5:]}


@torch.no_grad()
def zero_shot(model, tokenizer, task_name: str, per_class: int, seed: int) -> float:
    """Zero-shot accuracy with the task's single hand-crafted template, on its test split."""
    task = load_world_task(task_name, train_per_class=1, val_per_class=0, test_per_class=per_class, seed=seed)
    texts = [task.labels.templates[0].format(c) for c in task.labels.classnames]
    text = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    images = np.stack([np.asarray(task.test.load(s)) for s in task.test.sources])
    feats = image_features(model.visual, images)
    pred = (feats @ text.t()).argmax(-1)
    return round((pred == torch.tensor(task.test.labels)).float().mean().item(), 4)


def used_token_ids(tokenizer, pool) -> list[int]:
    """Every token id of the captions, the hand-crafted templates and the world's names."""
    texts = [c for caps in pool.captions for c in caps]
    texts += [t for group in VOCAB.template_groups.values() for t in group]
    texts += [t for task in WORLD_TASKS.values() for t in task.label_space().templates]
    words = [*VOCAB.shapes, *VOCAB.colours, *VOCAB.textures, *VOCAB.sizes, *VOCAB.positions, *VOCAB.counts,
             *VOCAB.backgrounds, *VOCAB.styles, "shape", "shapes", "object", "objects"]
    texts += words
    ids = set()
    for i in range(0, len(texts), 4096):
        ids.update(tokenizer(texts[i:i + 4096]).unique().tolist())
    return sorted(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("src/vlprompt/assets/world/clip"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=60000, help="pretraining images")
    parser.add_argument("--workers", type=int, default=2, help="processes that render the pool")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-epochs", type=int, default=4)
    parser.add_argument("--image-lr", type=float, default=1e-3)
    parser.add_argument("--text-batch", type=int, default=512)
    parser.add_argument("--text-epochs", type=int, default=6)
    parser.add_argument("--text-lr", type=float, default=1e-3)
    parser.add_argument("--eval-per-class", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t0 = time.time()
    pool = pretraining_pool(args.pool, seed=args.seed, workers=args.workers)
    log.info("rendered %d pretraining images in %.1f min", len(pool.images), (time.time() - t0) / 60)
    model = build_world_clip()
    tokenizer = world_clip_tokenizer()
    image_report = train_image_tower(model, pool, args)
    text_report = train_text_tower(model, pool, tokenizer, args)

    meta = {
        "script": "scripts/pretrain_world_clip.py",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "image_stage": image_report,
        "text_stage": text_report,
    }
    save_world_clip(model, args.out, used_token_ids(tokenizer, pool), meta)
    shipped, tokenizer, _ = load_world_clip(args.out)  # measure what ships (fp16, sparse embedding)
    tasks = ["object", *[f"object-{s}" for s in VOCAB.styles], "colour", "texture", "style", "size",
             "position", "count"]
    chance = {t: round(1 / len(WORLD_TASKS[t].classnames), 4) for t in tasks}
    meta["zero_shot"] = {t: zero_shot(shipped, tokenizer, t, args.eval_per_class, args.seed) for t in tasks}
    meta["chance"] = chance
    meta["total_minutes"] = round((time.time() - t0) / 60, 1)
    save_world_clip(model, args.out, used_token_ids(tokenizer, pool), meta)
    log.info("zero-shot: %s", json.dumps(meta["zero_shot"]))


if __name__ == "__main__":
    main()
