"""Task heads: how an image method turns the tower's tokens into its task's logits and loss.

A method that supports several task types (linear, fine-tuning, VPT, SPT, the parameter-efficient rows) builds
``task_head(...)``: for classification its own classifier on the tower's pooled features (unchanged: a Linear, or
the head its paper uses); for segmentation a SETR decoder (prompts/setr.py) on the patch-token grid. A dense head
says which block outputs it reads (``blocks``), turns them into logits (``read``) and scores them (``loss``);
``dense_forward`` runs that sequence for any method that can produce its tower's block outputs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from vlprompt.backbones.base import VisionTower
from vlprompt.core.config import build_config
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import LabelSpace
from vlprompt.prompts.setr import SETR_KINDS, SetrHeadSpec, SetrUpHead, setr_aux_blocks, setr_spec

HEAD_OPTION_HELP = (
    "segmentation head options (SegmentationHeadConfig: kind setr-pup|setr-naive, channels, num_convs, "
    "kernel_size, up_scale, aux_blocks, aux_weight); only for segmentation tasks"
)


@dataclass
class SegmentationHeadConfig:
    """SETR's decoder on a (prompted) ViT. Unset fields take SETR's values for the chosen kind (prompts/setr.py)."""

    kind: str = field(default="setr-pup", metadata={
        "help": "setr-pup (progressive x2 upsampling, the VPT paper's choice) or setr-naive (1x1 convs + one "
                "bilinear upsampling)", "choices": SETR_KINDS})
    channels: int = field(default=256, metadata={"help": "decoder width (SETR on ADE20K: 256)", "range": (1, None)})
    num_convs: int | None = field(default=None, metadata={
        "help": "conv+upsample stages; unset: 1 (naive) or log2(patch size) (pup: 4 for patch 16, as SETR)",
        "range": (1, None)})
    kernel_size: int | None = field(default=None, metadata={
        "help": "conv kernel, 1 or 3; unset: 1 (naive) or 3 (pup)", "choices": (1, 3)})
    up_scale: int | None = field(default=None, metadata={
        "help": "upsampling factor after each stage; unset: 4 (naive) or 2 (pup)", "range": (1, None)})
    aux_blocks: list | str = field(default="setr", metadata={
        "help": "blocks whose outputs feed auxiliary heads during training: 'setr' (blocks 10, 15, 20 of 24, "
                "scaled to the depth), 'none', or a list of 0-based block indices"})
    aux_weight: float = field(default=0.4, metadata={
        "help": "weight of each auxiliary head's loss (SETR: 0.4)", "range": (0.0, None)})

    def __post_init__(self) -> None:
        if isinstance(self.aux_blocks, str) and self.aux_blocks not in ("setr", "none"):
            raise ConfigError(f"SegmentationHeadConfig.aux_blocks = {self.aux_blocks!r}: use 'setr', 'none' or a "
                              "list of 0-based block indices such as [3, 6, 9].")


class SegmentationHead(nn.Module):
    """SETR on the patch grid of the last block, with auxiliary SETR heads on earlier blocks during training.

    Logits come back at the input's resolution (bilinear from the decoder's); the loss is cross-entropy with the
    ignore index at the label's resolution, plus ``aux_weight`` times each auxiliary head's (training only).
    """

    def __init__(self, visual: VisionTower, num_classes: int, ignore_index: int,
                 config: SegmentationHeadConfig) -> None:
        super().__init__()
        spec = setr_spec(config.kind, visual.patch_size, config.channels, config.num_convs, config.kernel_size,
                         config.up_scale)
        self.main_block = visual.num_blocks - 1
        aux = setr_aux_blocks(config.aux_blocks, visual.num_blocks)
        self.aux_block_ids = tuple(b for b in aux if b != self.main_block)
        self.decoder = SetrUpHead(visual.width, num_classes, spec)
        aux_spec = SetrHeadSpec(spec.kind, spec.channels, 2, spec.kernel_size, spec.up_scale)
        self.aux = nn.ModuleList(SetrUpHead(visual.width, num_classes, aux_spec) for _ in self.aux_block_ids)
        self.ignore_index = ignore_index
        self.aux_weight = config.aux_weight

    def blocks(self, num_blocks: int) -> tuple[int, ...]:
        return (*self.aux_block_ids, self.main_block) if self.training else (self.main_block,)

    def read(self, visual: VisionTower, outputs: dict[int, torch.Tensor], num_prompts: int,
             image_size: tuple[int, int]) -> dict:
        grid = (image_size[0] // visual.patch_size, image_size[1] // visual.patch_size)

        def decode(head: SetrUpHead, block: int) -> torch.Tensor:
            feature_map = visual.patch_grid(outputs[block], num_prompts, grid)
            logits = head(feature_map.to(head.norm.weight.dtype))
            return F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)

        read = {"logits": decode(self.decoder, self.main_block)}
        if self.training:
            read["aux"] = [decode(head, block) for head, block in zip(self.aux, self.aux_block_ids)]
        return read

    def loss(self, read: dict, batch: dict) -> torch.Tensor | None:
        label = batch.get("label")
        if label is None:
            return None
        total = self.pixel_loss(read["logits"], label)
        for logits in read.get("aux", []):
            total = total + self.aux_weight * self.pixel_loss(logits, label)
        return total

    def pixel_loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != label.shape[-2:]:
            logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        if bool((label != self.ignore_index).any()):
            return F.cross_entropy(logits.float(), label, ignore_index=self.ignore_index)
        return logits.sum() * 0.0  # a crop with only ignored pixels: no signal, but a defined (zero) loss


def dense_forward(head: SegmentationHead, visual: VisionTower,
                  block_outputs: Callable[[tuple[int, ...]], dict[int, torch.Tensor]], num_prompts: int,
                  batch: dict) -> dict:
    """A segmentation method's forward: the block outputs the head reads -> logits at the input size -> loss."""
    image_size = tuple(batch["image"].shape[-2:])
    read = head.read(visual, block_outputs(head.blocks(visual.num_blocks)), num_prompts, image_size)
    return {"loss": head.loss(read, batch), "logits": read["logits"]}


def task_head(visual: VisionTower, labels: LabelSpace, head_options: dict,
              classifier: Callable[[], nn.Module] | None = None) -> nn.Module:
    """The head for ``labels.task_type``: ``classifier()`` (default a Linear on the pooled features) for
    classification, SETR for segmentation. ``head_options`` configure the SETR head and must be empty otherwise."""
    if labels.task_type == "segmentation":
        config = build_config(SegmentationHeadConfig, head_options, where="method_options.head")
        return SegmentationHead(visual, labels.num_classes, labels.ignore_index, config)
    if head_options:
        raise ConfigError(
            f"method_options.head = {head_options!r} configures a segmentation head, but this is a "
            f"{labels.task_type} task; drop 'head'."
        )
    return classifier() if classifier is not None else nn.Linear(visual.feature_dim, labels.num_classes)
