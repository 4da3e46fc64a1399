"""VPT (visual prompt tuning): learned prompts in a frozen backbone, read out by its pooling, a Linear head.

Only the prompts (+ optional projection) and the head train; the backbone stays frozen and in eval mode.
SPT (methods/spt.py) is this same model with prompts initialised from the data's own tokens.

The official ablations (KMnP/vpt ``src/configs/config.py`` MODEL.PROMPT.*) are options here under the official
names: ``location`` (LOCATION), ``readout`` (VIT_POOL_TYPE), ``num_deep_layers`` / ``reverse_deep`` /
``deep_shared`` / ``deep_noexpand`` (FORWARD_DEEP_NOEXPAND), ``projection_dim`` (PROJECT), ``dropout`` (DROPOUT), ``initiation`` (INITIATION). What a backbone
supports is declared by its tower (``VisionTower.prompt_support``: token prompts on ViTs, per-stage prompts on
Swin, pixel prompts on ConvNets); an option it cannot carry is refused with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.prompt_support import PROMPT_LOCATIONS, PROMPT_READOUTS
from vlprompt.core.config import ValidatedConfig, option
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import PromptMethod, register_method
from vlprompt.methods.heads import HEAD_OPTION_HELP, dense_forward, task_head
from vlprompt.prompts.below import BelowPrompts
from vlprompt.prompts.pixel import PadPrompts, PixelTokenPrompts
from vlprompt.prompts.visual import (
    DeepPlan,
    VisualPrompts,
    prompted_block_outputs,
    prompted_forward,
    prompted_sequence,
    read_out,
)

log = logging.getLogger(__name__)
INITIATIONS = ("random", "gaussian")


@dataclass
class VPTConfig(ValidatedConfig):
    """VPT's options; each field's help says what it does (``vlprompt list methods --options vpt-deep``).
    Per-block NMI during training is a trainer callback (analysis/nmi.py NMICallback) set by the run config's
    ``nmi`` section, not a method option."""

    num_tokens: int = option(
        10,
        help="prompt tokens p per insertion point (VPT uses 1-200; pad: the frame's width in pixels; add: unused, "
        "one prompt per token)",
        range=(1, None),
    )
    dropout: float | None = option(
        None, help="dropout on the prompts; unset means VPT's defaults (0.1 deep, 0 shallow)", range=(0.0, 0.99)
    )
    projection_dim: int | None = option(
        None,
        help="learn prompts at width k, mapped to the backbone's width d by a Linear (official PROJECT; "
        "prepend / add / add-1 on ViTs; unset: at d)",
        range=(1, None),
    )
    pool_prompts: bool = option(
        True,
        help=("whether prompt tokens enter a mean-pooled readout (MAE backbones and Swin; VPT includes them) or the "
              "keys of an attention-pooled (MAP, SigLIP) readout; CLS readouts ignore it"),
    )
    location: str = option(
        "prepend",
        help="where prompts enter (official LOCATION): prepend (tokens after the prefix), add (added to every "
        "token), add-1 (one prompt added to every token), prepend-pixel (pixel patches through the patch "
        "embedding), pad (learnable pixels around the image), below (extra input channels); the backbone "
        "declares which it supports",
        choices=PROMPT_LOCATIONS,
    )
    readout: str = option(
        "original",
        help="features for the head (official VIT_POOL_TYPE): original (the backbone's own pooling), "
        "img_pool / prompt_pool / imgprompt_pool (mean of the final patch / prompt / both tokens; ViTs, "
        "location prepend)",
        choices=PROMPT_READOUTS,
    )
    num_deep_layers: int | None = option(
        None,
        help="deep prompts at the first n blocks only (official NUM_DEEP_LAYERS; vpt-deep on ViTs; unset: "
        "every block)",
        range=(1, None),
    )
    reverse_deep: bool = option(
        False,
        help="with num_deep_layers: prompt the last n blocks instead of the first (official REVERSE_DEEP; like the "
        "official, the first prompted block overwrites p patch tokens)",
    )
    deep_shared: bool = option(False, help="one prompt set shared by every deep block (official DEEP_SHARED)")
    deep_noexpand: bool = option(
        False,
        help="with num_deep_layers: remove the prompt tokens after the last prompted block, so the remaining "
        "blocks and the readout see the unprompted sequence (official FORWARD_DEEP_NOEXPAND; location prepend)",
    )
    initiation: str = option(
        "random",
        help="prompt init (official INITIATION): random (VPT's uniform bound; pixel frames uniform in [0, 1] "
        "pixel space, normalised) or gaussian (pad only: N(0, 1) pixels, not normalised)",
        choices=INITIATIONS,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        where = type(self).__name__
        if self.reverse_deep and self.num_deep_layers is None:
            raise ConfigError(
                f"{where}.reverse_deep needs num_deep_layers (how many of the last blocks take prompts); set it."
            )
        if self.reverse_deep and self.deep_shared:
            raise ConfigError(
                f"{where}: reverse_deep and deep_shared together are not an official option (its reversed pass "
                "never reads DEEP_SHARED); pick one."
            )
        if self.deep_noexpand and self.readout != "original":
            raise ConfigError(
                f"{where}: deep_noexpand removes the prompt tokens before the readout, so readout={self.readout} "
                "has no prompt span to pool; use readout=original."
            )
        if self.deep_noexpand and (self.location != "prepend" or self.reverse_deep):
            raise ConfigError(
                f"{where}.deep_noexpand applies to prepended prompts in a forward partial depth (the official "
                f"FORWARD_DEEP_NOEXPAND path); with location={self.location}, reverse_deep={self.reverse_deep} "
                "leave it false."
            )
        if self.initiation == "gaussian" and self.location != "pad":
            raise ConfigError(
                f"{where}.initiation = gaussian applies to pad prompts only (the official ResNet pixel frame); "
                f"with location={self.location} use random."
            )
        if self.readout != "original" and self.location != "prepend":
            raise ConfigError(
                f"{where}.readout = {self.readout} pools prompt or patch tokens and needs location=prepend (the "
                f"official code asserts it); with location={self.location} use readout=original."
            )
        if self.projection_dim is not None and self.location not in ("prepend", "add", "add-1"):
            raise ConfigError(
                f"{where}.projection_dim applies to token prompts (prepend, add, add-1), as the official PROJECT; "
                f"location={self.location} learns pixels. Leave projection_dim unset."
            )

    head: dict = option(help=HEAD_OPTION_HELP, default_factory=dict)


class VisualPromptMethod(PromptMethod):
    """Shared VPT/SPT model; subclasses fix ``deep``."""

    config_class: ClassVar[type] = VPTConfig
    deep: ClassVar[bool] = False
    task_types: ClassVar[tuple[str, ...]] = ("classification", "segmentation")
    # True for variants whose prompts only make sense as tokens of one width in a ViT pipeline (SPT prototypes)
    sequence_only: ClassVar[bool] = False
    train_defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4}

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: Any) -> None:
        super().__init__(backbone, labels, config)
        visual = backbone.visual
        self.support = visual.prompt_support()
        self._check_options(config)
        self.prompts: VisualPrompts | None = None
        self.pad: PadPrompts | None = None
        self.pixel_prompts: PixelTokenPrompts | None = None
        self.below: BelowPrompts | None = None
        location = config.location
        if location == "below":
            stem = visual.input_stem()
            self.below = BelowPrompts(
                config.num_tokens, backbone.preprocess.image_size, stem.conv, stem.norm, stem.style
            )
        elif location == "pad":
            preprocess = backbone.preprocess
            self.pad = PadPrompts(
                config.num_tokens, preprocess.image_size, preprocess.mean, preprocess.std, config.initiation
            )
        elif location == "prepend-pixel":
            self.pixel_prompts = PixelTokenPrompts(config.num_tokens, visual.patch_size, visual.width)
        else:
            self.prompts = self._token_prompts(backbone, config)
        self.head = task_head(visual, labels, config.head)
        self.dense = labels.task_type == "segmentation"
        if self.dense and (self.support.kind != "sequence" or location != "prepend"):
            raise ConfigError(
                f"method '{self.method_name}' on '{backbone.backbone_id}': segmentation reads the patch tokens of a "
                f"ViT token pipeline with prepended prompts; location={location} on a '{self.support.kind}' tower "
                "has no such grid. Use location=prepend on a ViT backbone."
            )

    def _check_options(self, config: Any) -> None:
        """Refuse, with the reason, every option this backbone's tower cannot carry."""
        support, where = self.support, f"method '{self.method_name}' on '{self.backbone.backbone_id}'"
        if self.sequence_only and support.kind != "sequence":
            raise ConfigError(
                f"{where}: SPT prototypes are tokens of one width collected from a ViT token pipeline; this "
                f"backbone's prompts are of kind '{support.kind}' (Swin stages or ConvNet pixels). Use vpt-shallow "
                "/ vpt-deep on it."
            )
        if config.location not in support.locations:
            raise support.refuse("location", config.location, where)
        if config.readout not in support.readouts:
            raise support.refuse("readout", config.readout, where)
        if self.deep and config.location not in support.deep_locations:
            raise ConfigError(
                f"{where}: deep prompts at location '{config.location}' are not an official option here (deep "
                f"prompts work at {', '.join(support.deep_locations) or 'no location'} on this backbone); use "
                "the shallow method or another location."
            )
        partial = (
            config.num_deep_layers is not None or config.reverse_deep or config.deep_shared or config.deep_noexpand
        )
        if partial and not self.deep:
            raise ConfigError(
                f"{where}: num_deep_layers / reverse_deep / deep_shared / deep_noexpand shape deep prompts; use the "
                "deep method."
            )
        if partial and support.kind != "sequence":
            raise support.refuse("partial depth", "partial-depth", where)
        blocks = self.visual.num_blocks
        if config.num_deep_layers is not None and config.num_deep_layers > blocks:
            raise ConfigError(
                f"{where}: num_deep_layers = {config.num_deep_layers} exceeds the backbone's {blocks} blocks."
            )
        if config.projection_dim is not None and support.kind == "windows":
            raise ConfigError(
                f"{where}: projection_dim is not applied on Swin by the official code (its Swin builds the "
                "projection but never calls it, and stage widths differ); leave it unset."
            )

    def _token_prompts(self, backbone: Backbone, config: Any) -> VisualPrompts:
        visual = self.visual
        plan = DeepPlan(
            num_blocks=visual.num_blocks,
            deep=self.deep,
            num_deep_layers=config.num_deep_layers,
            reverse=config.reverse_deep,
            shared=config.deep_shared,
            noexpand=config.deep_noexpand,
        )
        count = config.num_tokens
        if config.location == "add-1":
            count = 1
        elif config.location == "add":
            size = backbone.preprocess.image_size
            with torch.no_grad():
                count = int(visual.embed(torch.zeros(1, 3, size, size)).shape[1])  # every token, CLS included
        widths = [self.support.block_widths[plan.first_block + i] for i in range(plan.num_sets)]
        if plan.shared or not self.deep:
            widths = [self.support.block_widths[plan.first_block]]
        dropout = config.dropout if config.dropout is not None else (0.1 if self.deep else 0.0)
        return VisualPrompts(
            num_tokens=count,
            width=visual.width,
            dropout=dropout,
            projection_dim=config.projection_dim,
            patch_size=visual.patch_size,
            plan=plan,
            location=config.location,
            widths=widths,
        )

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What trained, plus the running statistics of a ``below`` ResNet stem (they change in training)."""
        state = super().trainable_state_dict()
        if self.below is not None:
            for name in self.below.statistics_names():
                state[f"below.{name}"] = getattr(self.below, name).detach().clone()
        return state

    def shares_token_pass(self) -> bool:
        """True when these prompts are plain VPT ones (prepend, shallow or every block, the backbone's own
        readout, on a ViT token pipeline), which multi-task serving batches in one shared pass."""
        prompts = self.prompts
        return (
            prompts is not None
            and self.support.kind == "sequence"
            and prompts.location == "prepend"
            and self.config.readout == "original"
            and prompts.plan.num_sets in (1, self.visual.num_blocks)
            and not prompts.plan.shared
            and not prompts.plan.reverse
            and not prompts.plan.noexpand
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled image features (the classification readout's input)."""
        config = self.config
        if self.pad is not None or self.below is not None:
            if self.pad is not None:
                tokens = self.visual.embed_any_size(self.pad(images))
            else:
                tokens = self.visual.embed_after_stem(self.below(images))
            for index in range(self.visual.num_blocks):
                tokens = self.visual.block(index, tokens)
            return self.visual.finalize(tokens, num_prompts=0, pool_prompts=config.pool_prompts)
        if self.pixel_prompts is not None:
            tokens, present = prompted_sequence(
                self.visual, None, images, first_tokens=lambda t: self.pixel_prompts.insert(self.visual, t)
            )
            return read_out(self.visual, tokens, present, config.readout, config.pool_prompts)
        return prompted_forward(
            self.visual, self.prompts, images, pool_prompts=config.pool_prompts, readout=config.readout
        )

    def forward(self, batch: dict) -> dict:
        images = batch["image"]
        if self.dense:
            return dense_forward(self.head, self.visual,
                                 lambda blocks: prompted_block_outputs(self.visual, self.prompts, images, blocks),
                                 self.prompts.num_tokens, batch)
        logits = self.head(self.encode(images))
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}


@register_method("vpt-shallow")
class VPTShallow(VisualPromptMethod):
    """p prompts inserted once after the prefix tokens; they pass through every block."""

    deep = False


@register_method("vpt-deep")
class VPTDeep(VisualPromptMethod):
    """A fresh set of p prompts at the input of every block (N*p*d prompt parameters)."""

    deep = True
