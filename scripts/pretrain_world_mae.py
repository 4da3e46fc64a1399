"""Train the shipped world MAE ViT (``world:mae``) from a seed, on CPU.

Masked autoencoding (He et al. 2022) on the world's pretraining images: the timm ViT encodes a random 20 % of
the patches; a small decoder (this script's, not shipped) reconstructs the pixels of the masked ones. No labels
are used, so its features are what self-supervision alone gives (the SPT paper's case).

    python scripts/pretrain_world_mae.py              # writes src/vlprompt/assets/world/mae/

The shipped file took about 25 minutes with the defaults (seed 0) on 2 shared CPU cores; the run's record is
under "world_meta" in its timm_config.json.
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
from timm.models.vision_transformer import Block

from vlprompt.backbones.world import (
    MAE_CONFIG,
    build_world_mae,
    load_world_mae,
    save_world_mae,
)
from vlprompt.backbones.world import (
    world_images_to_tensor as to_tensor,
)
from vlprompt.data.world.pretrain import pretraining_pool
from vlprompt.data.world.tasks import load_world_task

log = logging.getLogger("pretrain_world_mae")


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class MaeDecoder(torch.nn.Module):
    """Mask tokens + learned positions -> a few transformer blocks -> pixels of each patch."""

    def __init__(self, enc_width: int, num_patches: int, patch_dim: int, width: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(enc_width, width)
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, width))
        self.pos = torch.nn.Parameter(torch.randn(1, num_patches + 1, width) * 0.02)
        self.blocks = torch.nn.ModuleList([Block(width, 2, mlp_ratio=4.0) for _ in range(depth)])
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, patch_dim)

    def forward(self, encoded: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(encoded)
        cls, visible = x[:, :1], x[:, 1:]
        b, n = restore.shape
        masks = self.mask_token.expand(b, n - visible.shape[1], -1)
        full = torch.cat([visible, masks], dim=1)
        full = torch.gather(full, 1, restore[..., None].expand(-1, -1, full.shape[-1]))
        x = torch.cat([cls, full], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))[:, 1:]


def encode_visible(model, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The timm ViT on the kept patches only (MAE's encoder): patch embed, positions, select, prefix, blocks."""
    tokens = model.patch_embed(x) + model.pos_embed[:, model.num_prefix_tokens:]
    tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(len(x), -1, -1)
    tokens = model.norm_pre(torch.cat([cls, tokens], dim=1))
    for block in model.blocks:
        tokens = block(tokens)
    return model.norm(tokens)


@torch.no_grad()
def probe_accuracy(model, task_name: str, seed: int) -> float:
    """Logistic-regression probe on mean-pooled features (all 32 train images per class), a sanity figure."""
    from sklearn.linear_model import LogisticRegression

    task = load_world_task(task_name, train_per_class=32, val_per_class=0, test_per_class=30, seed=seed)

    def feats(split):
        images = np.stack([np.asarray(split.load(s)) for s in split.sources])
        return torch.cat([model(to_tensor(images[i:i + 512])) for i in range(0, len(images), 512)]).numpy()

    clf = LogisticRegression(max_iter=2000).fit(feats(task.train), task.train.labels)
    return round(float((clf.predict(feats(task.test)) == np.asarray(task.test.labels)).mean()), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("src/vlprompt/assets/world/mae"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=60000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--mask-ratio", type=float, default=0.8)
    parser.add_argument(
        "--norm-pix", action="store_true",
        help="per-patch normalised targets (MAE's default; off here: most 4x4 world patches are flat, and "
        "normalising a flat patch leaves only its noise to predict)",
    )
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t0 = time.time()
    pool = pretraining_pool(args.pool, seed=args.seed, captions_per_image=0, workers=args.workers)
    log.info("rendered %d images in %.1f min", len(pool.images), (time.time() - t0) / 60)
    model = build_world_mae()
    patch = MAE_CONFIG["model_kwargs"]["patch_size"]
    num_patches = model.patch_embed.num_patches
    decoder = MaeDecoder(model.embed_dim, num_patches, patch * patch * 3)
    params = list(model.parameters()) + list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    n = len(pool.images)
    steps = args.epochs * n // args.batch
    keep_count = round(num_patches * (1 - args.mask_ratio))
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    start, step, history = time.time(), 0, []
    while step < steps:
        for idx in torch.randperm(n, generator=gen).split(args.batch):
            if step >= steps or len(idx) < args.batch:
                break
            warmup = 200
            lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
            for group in opt.param_groups:
                group["lr"] = lr
            x = to_tensor(pool.images[idx.numpy()])
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
            shuffle = torch.rand(len(idx), num_patches, generator=gen).argsort(dim=1)
            restore = shuffle.argsort(dim=1)
            keep = shuffle[:, :keep_count]
            target = patchify(x, patch)
            if args.norm_pix:
                target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                pred = decoder(encode_visible(model, x, keep), restore)
            masked = torch.ones(len(idx), num_patches)
            masked[:, :keep_count] = 0
            masked = torch.gather(masked, 1, restore)
            loss = (((pred.float() - target) ** 2).mean(-1) * masked).sum() / masked.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if step % 50 == 0 or step == steps:
                row = {"step": step, "loss": round(loss.item(), 4), "minutes": round((time.time() - start) / 60, 2)}
                history.append(row)
                log.info("mae %s", row)
    model.eval()
    meta = {
        "script": "scripts/pretrain_world_mae.py",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "steps": steps,
        "train_minutes": round((time.time() - start) / 60, 2),
        "history": history[-5:],
    }
    save_world_mae(model, args.out, meta)
    shipped = load_world_mae(args.out)  # measure what ships (fp16, timm's own loading path)
    meta["linear_probe_32shot"] = {t: probe_accuracy(shipped, t, args.seed) for t in ("object", "texture", "style")}
    meta["total_minutes"] = round((time.time() - t0) / 60, 1)
    save_world_mae(model, args.out, meta)
    log.info("probe: %s", json.dumps(meta["linear_probe_32shot"]))


if __name__ == "__main__":
    main()
