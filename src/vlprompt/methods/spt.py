"""SPT (self-prompt tuning): the VPT model with prompts initialised from prototypes of the data's own tokens.

Before training, ``setup`` streams the training set once through the frozen backbone and sets the prompts
(prompts/init.py); from then on it trains exactly like VPT.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from vlprompt.core.config import option
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import ImageDataset
from vlprompt.methods.base import register_method
from vlprompt.methods.vpt import VisualPromptMethod, VPTConfig
from vlprompt.prompts.init import INITIALIZERS, InitReport, prototype_prompts

log = logging.getLogger(__name__)


@dataclass
class SPTConfig(VPTConfig):
    """SPT: VPT's options plus how the prompt prototypes are collected and clustered. The token budget
    bounds memory (depth x token_budget x d) whatever the training-set size."""

    init: str = option("kmeans", help="prototype strategy (kmeans is the SPT paper's best)", choices=INITIALIZERS)
    token_budget: int = option(
        50000, help="tokens kept per insertion point for the prototypes (memory = depth x budget x d)"
    )
    init_batch_size: int = option(
        64, help="batch of the collection pass (pooling/sampling strategies use one random such batch)",
        range=(1, None),
    )
    kmeans_iterations: int = option(
        50, help="mini-batch k-means steps, spread over the pass's batches (at least one per batch)", range=(0, None)
    )
    kmeans_batch_size: int = option(1024, help="mini-batch k-means batch size (tokens)", range=(1, None))
    kmeans_refine: int = option(
        20,
        help="most Lloyd passes over the kept tokens after the pass (fewer when they converge, or when the streamed "
        "tokens cannot pay for them: prompts/init.py refine_passes)",
        range=(0, None),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        where = type(self).__name__
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
                "ablations. Use vpt-shallow / vpt-deep for them."
            )


def initialize_prototype_prompts(
    method: VisualPromptMethod, dataset: ImageDataset, device: torch.device | str = "cpu", seed: int = 0
) -> InitReport:
    """Set ``method``'s prompts from ``dataset`` (with its eval transform); deterministic for a given seed."""
    config = method.config
    loader = DataLoader(dataset, batch_size=config.init_batch_size, shuffle=False)
    started = time.perf_counter()
    values, report = prototype_prompts(
        method.visual,
        (images for images, _ in loader),
        len(loader),
        num_prompts=config.num_tokens,
        depth=method.prompts.depth,
        strategy=config.init,
        token_budget=config.token_budget,
        seed=seed,
        device=device,
        kmeans_iterations=config.kmeans_iterations,
        kmeans_batch_size=config.kmeans_batch_size,
        kmeans_refine=config.kmeans_refine,
    )
    method.prompts.set_tokens(values)
    log.info("%s: prompts initialised by %s in %.2fs", method.method_name, config.init, time.perf_counter() - started)
    return report


# SPT is VPT's model with a data-driven start: both variants are siblings of VPT's one level below
# VisualPromptMethod, adding only the SPT config and the ``setup`` hook that sets the prototypes.
@register_method("spt-shallow")
class SPTShallow(VisualPromptMethod):
    """Shallow prompts initialised from patch-embedding tokens."""

    config_class = SPTConfig
    deep = False
    sequence_only = True  # prototypes are tokens of one width collected from a ViT token pipeline

    def initialize_prompts(self, dataset: ImageDataset, device: torch.device | str = "cpu", seed: int = 0) -> InitReport:
        return initialize_prototype_prompts(self, dataset, device, seed)

    def setup(self, train_dataset: ImageDataset, trainer: Any) -> None:
        initialize_prototype_prompts(self, train_dataset, trainer.device, trainer.config.seed)


@register_method("spt-deep")
class SPTDeep(VisualPromptMethod):
    """Deep prompts; block l's prompts are initialised from the patch tokens entering block l."""

    config_class = SPTConfig
    deep = True
    sequence_only = True  # prototypes are tokens of one width collected from a ViT token pipeline

    def initialize_prompts(self, dataset: ImageDataset, device: torch.device | str = "cpu", seed: int = 0) -> InitReport:
        return initialize_prototype_prompts(self, dataset, device, seed)

    def setup(self, train_dataset: ImageDataset, trainer: Any) -> None:
        initialize_prototype_prompts(self, train_dataset, trainer.device, trainer.config.seed)
