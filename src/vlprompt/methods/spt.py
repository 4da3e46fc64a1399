"""SPT (self-prompt tuning): the VPT model with prompts initialised from prototypes of the data's own tokens.

Before training, ``setup`` streams the training set once through the frozen backbone and sets the prompts
(prompts/init.py); from then on it trains exactly like VPT.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from vlprompt.config_utils import check_range
from vlprompt.data.base import ImageDataset
from vlprompt.errors import ConfigError
from vlprompt.methods.base import register_method
from vlprompt.methods.vpt import VisualPromptMethod, VPTConfig
from vlprompt.prompts.init import INITIALIZERS, InitReport, prototype_prompts

log = logging.getLogger(__name__)


@dataclass
class SPTConfig(VPTConfig):
    """SPT: VPT's options plus how the prompt prototypes are collected and clustered. The token budget
    bounds memory (depth x token_budget x d) whatever the training-set size."""

    init: str = field(
        default="kmeans",
        metadata={"help": (
            "prototype strategy: kmeans (the paper's best) | mean_pool | max_pool | random_sample"
        )},
    )
    token_budget: int = field(
        default=50000,
        metadata={"help": "tokens kept per insertion point for the prototypes (memory = depth x budget x d)"},
    )
    init_batch_size: int = field(
        default=64,
        metadata={"help": (
            "batch of the collection pass (pooling/sampling strategies use one random such batch)"
        )},
    )
    kmeans_iterations: int = field(default=50, metadata={"help": "mini-batch k-means iterations"})
    kmeans_batch_size: int = field(default=1024, metadata={"help": "mini-batch k-means batch size (tokens)"})
    kmeans_refine: int = field(
        default=20,
        metadata={"help": "full Lloyd passes after the mini-batch k-means"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        where = type(self).__name__
        if self.init not in INITIALIZERS:
            raise ConfigError(
                f"{where}.init = {self.init!r} is not an SPT initialiser; choose one of {list(INITIALIZERS)} "
                "(kmeans is the SPT paper's best)."
            )
        if self.projection_dim is not None:
            raise ConfigError(
                f"{where}.projection_dim = {self.projection_dim}: SPT prompts are prototypes of the backbone's own "
                "d-wide tokens and cannot be learned at another width. Leave projection_dim unset, or use "
                "vpt-shallow / vpt-deep for projected prompts."
            )
        if self.token_budget < self.num_tokens:
            raise ConfigError(
                f"{where}.token_budget = {self.token_budget} is smaller than num_tokens = {self.num_tokens}: "
                "prototypes need at least as many tokens as prompts. Raise token_budget (thousands is typical)."
            )
        if (
            self.location != "prepend" or self.num_deep_layers is not None or self.reverse_deep or self.deep_shared
            or self.deep_noexpand
        ):
            raise ConfigError(
                f"{where}: SPT initialises prepended prompts for the input (shallow) or every block (deep) from the "
                "tokens entering them; location, num_deep_layers, reverse_deep, deep_shared and deep_noexpand are VPT "
                "ablations. "
                "Use vpt-shallow / vpt-deep for them."
            )
        check_range(where, "init_batch_size", self.init_batch_size, 1)
        check_range(where, "kmeans_iterations", self.kmeans_iterations, 0)
        check_range(where, "kmeans_batch_size", self.kmeans_batch_size, 1)
        check_range(where, "kmeans_refine", self.kmeans_refine, 0)


class SelfPromptMethod(VisualPromptMethod):
    config_class = SPTConfig

    sequence_only = True  # prototypes are tokens of one width collected from a ViT token pipeline

    def initialize_prompts(
        self, dataset: ImageDataset, device: torch.device | str = "cpu", seed: int = 0
    ) -> InitReport:
        """Set the prompts from ``dataset`` (with its eval transform); deterministic for a given seed."""
        config = self.config
        loader = DataLoader(dataset, batch_size=config.init_batch_size, shuffle=False)
        started = time.perf_counter()
        values, report = prototype_prompts(
            self.visual,
            (images for images, _ in loader),
            len(loader),
            num_prompts=config.num_tokens,
            depth=self.prompts.depth,
            strategy=config.init,
            token_budget=config.token_budget,
            seed=seed,
            device=device,
            kmeans_iterations=config.kmeans_iterations,
            kmeans_batch_size=config.kmeans_batch_size,
            kmeans_refine=config.kmeans_refine,
        )
        self.prompts.set_tokens(values)
        log.info(
            "%s: prompts initialised by %s in %.2fs",
            self.method_name,
            config.init,
            time.perf_counter() - started,
        )
        return report

    def setup(self, train_dataset: ImageDataset, trainer: Any) -> None:
        self.initialize_prompts(train_dataset, trainer.device, trainer.config.seed)


@register_method("spt-shallow")
class SPTShallow(SelfPromptMethod):
    """Shallow prompts initialised from patch-embedding tokens."""

    deep = False


@register_method("spt-deep")
class SPTDeep(SelfPromptMethod):
    """Deep prompts; block l's prompts are initialised from the patch tokens entering block l."""

    deep = True
