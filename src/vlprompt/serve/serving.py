"""Many trained prompts, one frozen backbone, one batch of images where each image names its task.

The VPT paper's point about storage has a serving side: visual prompts are per-sample inputs, so images of
different tasks can share one forward pass of the frozen ViT with each sample carrying its own task's prompts.
``MultiTaskPredictor`` does that through the adapter seams (``embed`` -> ``block`` -> ``finalize``):

- all images are embedded once (patch embedding does not depend on prompts);
- visual-prompt tasks (VPT / SPT, shallow or deep, any prompt count) run together: each sample gets its own
  task's prompts (stacked per sample; deep prompts are replaced per sample at every block). Samples whose
  sequences have different lengths (different prompt counts) are grouped by length, one pass per length: the
  adapters' blocks take no attention mask, and padding without one would change the results, so grouping is
  what keeps them exact;
- tasks that classify the frozen image features (CoOp, KgCoOp, ProGrad, zero-shot, linear, CoCoOp, the mixture)
  share one plain pass of the image tower; each task's head (text features per task) then reads its samples;
- any other method (e.g. prompts in both towers) runs its own forward on its samples, correct but unshared.
Methods that train backbone weights (fine-tuning) cannot share a backbone and are refused at load.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vlprompt.core.errors import CheckpointError, VlpromptError
from vlprompt.eval.image_predict import image_batches, topk_records
from vlprompt.eval.mask_outputs import refuse_segmentation

log = logging.getLogger(__name__)

BACKBONE_PREFIXES = ("visual.", "text.", "backbone.")


def _kind(method) -> str:
    """'visual' (per-sample prompts in the image tower), 'features' (head on frozen features) or 'alone'."""
    from vlprompt.methods.vpt import VisualPromptMethod

    if isinstance(method, VisualPromptMethod) and method.shares_token_pass():
        return "visual"
    from vlprompt.methods.base import PromptMethod

    plain = type(method).image_features is PromptMethod.image_features
    if method.uses_image_features and plain:
        return "features"  # its features are exactly backbone.visual(images): the shared pass
    return "alone"


def _take(tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Rows of ``tensor``; no copy when they are all of it in order (a batch of one kind)."""
    return tensor if rows == list(range(tensor.shape[0])) else tensor[rows]


class MultiTaskPredictor:
    """N prompt folders (or loaded methods) on one shared frozen backbone; ``logits(images, tasks)`` computes a
    mixed batch in shared passes and equals each task's own forward."""

    def __init__(self, tasks: Mapping[str, Any], backbone: Any = None, device: str | None = None) -> None:
        from vlprompt.artifacts.pretrained import from_pretrained

        if not tasks:
            raise VlpromptError("MultiTaskPredictor needs at least one task (name -> prompt folder).")
        self.methods: dict[str, Any] = {}
        for name, source in tasks.items():
            if isinstance(source, (str, Path)):
                method = from_pretrained(source, backbone=backbone)
            else:
                method = source
                if backbone is not None and method.backbone is not backbone:
                    raise VlpromptError(f"Task '{name}' is built on another Backbone object than the shared one.")
            refuse_segmentation(method, "serve-batch", f"Task '{name}' ({source})" if isinstance(source, (str, Path))
                                else f"Task '{name}'")
            backbone = method.backbone
            trained_in_backbone = [n for n in method.trainable_state_dict() if n.startswith(BACKBONE_PREFIXES)]
            if trained_in_backbone:
                raise CheckpointError(
                    f"Task '{name}' ('{method.method_name}') trained backbone weights ({trained_in_backbone[0]}, "
                    "...); it cannot share a frozen backbone with other tasks. Serve it alone (vlprompt predict)."
                )
            self.methods[name] = method.eval()
        self.backbone = backbone
        self.kinds = {name: _kind(m) for name, m in self.methods.items()}
        if device:
            from vlprompt.core.distributed import resolve_device

            self.device = resolve_device(device)
        else:
            self.device = next(backbone.visual.parameters()).device
        for method in self.methods.values():
            method.to(self.device)

    def _check_tasks(self, tasks: Sequence[str]) -> None:
        unknown = sorted(set(tasks) - set(self.methods))
        if unknown:
            raise VlpromptError(f"Unknown task(s) {unknown}; this predictor serves {sorted(self.methods)}.")

    @torch.no_grad()
    def logits(self, images: torch.Tensor, tasks: Sequence[str]) -> list[torch.Tensor]:
        """Preprocessed images [B,3,H,W] and one task name per image -> one logits row per image (its task's
        classes)."""
        if len(tasks) != images.shape[0]:
            raise VlpromptError(f"{images.shape[0]} images but {len(tasks)} task names; give one task per image.")
        self._check_tasks(tasks)
        images = images.to(self.device)
        out: list[torch.Tensor | None] = [None] * len(tasks)
        visual = self.backbone.visual
        rows_by_kind: dict[str, list[int]] = {"visual": [], "features": [], "alone": []}
        for row, task in enumerate(tasks):
            rows_by_kind[self.kinds[task]].append(row)
        shared = rows_by_kind["visual"] + rows_by_kind["features"]
        tokens = visual.embed(_take(images, shared)) if shared else None
        position = {row: i for i, row in enumerate(shared)}
        if rows_by_kind["features"]:
            rows = rows_by_kind["features"]
            feats = visual.finalize(self._blocks(_take(tokens, [position[r] for r in rows])))
            self._heads(rows, tasks, feats, out, lambda method, f: method.predict({"features": f}))
        by_length: dict[int, list[int]] = {}
        for row in rows_by_kind["visual"]:
            by_length.setdefault(self.methods[tasks[row]].prompts.num_tokens, []).append(row)
        for rows in by_length.values():
            feats = self._prompted(_take(tokens, [position[r] for r in rows]), [tasks[r] for r in rows])
            self._heads(rows, tasks, feats, out, lambda method, f: method.head(f))
        for row in rows_by_kind["alone"]:
            out[row] = self.methods[tasks[row]].predict({"image": images[row : row + 1]})[0]
        return out  # type: ignore[return-value]

    def _blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        for index in range(self.backbone.visual.num_blocks):
            tokens = self.backbone.visual.block(index, tokens)
        return tokens

    def _prompted(self, tokens: torch.Tensor, tasks: list[str]) -> torch.Tensor:
        """One pass with per-sample prompts: shallow rows keep their prompts' outputs, deep rows get their
        task's next layer prompts at every block (as prompted_forward does for one task)."""
        visual = self.backbone.visual
        prefix = visual.num_prefix_tokens
        names = sorted(set(tasks))
        index = torch.tensor([names.index(t) for t in tasks], device=tokens.device)
        prompts = [self.methods[n].prompts for n in names]
        count = prompts[0].num_tokens
        deep_rows = torch.nonzero(torch.tensor([p.depth > 1 for p in prompts], device=tokens.device)[index]).flatten()

        def layer(i: int) -> torch.Tensor:  # [B, p, d]: each row's task prompts for insertion point i
            stack = [p.prompts(i if p.depth > 1 else 0, 1)[0] for p in prompts]
            return torch.stack(stack).to(tokens.dtype)[index]

        tokens = torch.cat([tokens[:, :prefix], layer(0), tokens[:, prefix:]], dim=1)
        for i in range(visual.num_blocks):
            if i > 0 and deep_rows.numel():
                # the previous block's output is a fresh tensor (no_grad): overwrite the deep rows' prompt slots
                tokens[deep_rows, prefix : prefix + count] = layer(i)[deep_rows]
            tokens = visual.block(i, tokens)
        features = torch.empty(0)
        pool = torch.tensor([bool(self.methods[t].config.pool_prompts) for t in tasks], device=tokens.device)
        for flag in (True, False):
            rows = torch.nonzero(pool == flag).flatten()
            if rows.numel():
                part = visual.finalize(tokens[rows], num_prompts=count, pool_prompts=flag)
                if features.numel() == 0:
                    features = part.new_empty(tokens.shape[0], part.shape[-1])
                features[rows] = part
        return features

    def _heads(self, rows: list[int], tasks: Sequence[str], feats: torch.Tensor, out: list, head) -> None:
        for name in sorted({tasks[r] for r in rows}):
            local = [i for i, r in enumerate(rows) if tasks[r] == name]
            logits = head(self.methods[name], feats[local])
            for j, k in enumerate(local):
                out[rows[k]] = logits[j]

    def predict_images(self, images: Sequence, tasks: Sequence[str], topk: int = 5, batch_size: int = 64,
                       progress: bool = False) -> list[dict]:
        """Top-k labels and probabilities per image (PIL or path), each scored by the task it names."""
        self._check_tasks(tasks)
        items, tasks = list(images), list(tasks)
        records: list[dict] = []
        batches = image_batches(items, self.backbone.preprocess, batch_size, progress)
        for start, batch in zip(range(0, len(items), batch_size), batches):
            names = tasks[start : start + batch_size]
            for name, logits in zip(names, self.logits(batch, names)):
                record = topk_records(logits[None].cpu(), self.methods[name].labels.classnames, topk)[0]
                records.append({"input": None, "task": name, **record})
        for item, record in zip(items, records):
            record["input"] = str(item) if isinstance(item, (str, Path)) else None
        return records
