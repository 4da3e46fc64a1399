"""Deep text prompts: CoOp's context at the embedding plus a fresh set of n tokens at the input of text layers 1..J-1.

This is VPT-deep on CLIP's causal text transformer, as IVLP, MaPLe and PromptSRC use it. Layer 0's prompts are the
context vectors written into the token embeddings (they get position embeddings, like CoOp's); layer i >= 1
overwrites the n positions right after SOS with its own tokens (no position embedding), discarding the previous
layer's outputs there. EOT pooling is unchanged. Everything goes through ``ContextPrompt`` (prompt assembly, class
chunking with checkpointing, the truncation and shared-prefix fast paths), which passes the deep tokens on to the
adapter's ``deep`` seam.

Initialisation follows the official code (multimodal-prompt-learning, PromptSRC): with ``ctx_init`` words the
first n of their tokens initialise layer 0's context and the rest stay in the prompt as fixed words ("a photo of
a" with n = 2 learns "a photo" and keeps "of a" before the class name); deeper prompts are drawn from N(0, 0.02).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from vlprompt.backbones.base import TextTower
from vlprompt.core.errors import ConfigError
from vlprompt.prompts.text import ContextPrompt, EvalCache, token_count
from vlprompt.prompts.text_plan import DEFAULT_TEXT_MEMORY_MB

DEEP_INIT_STD = 0.02  # nn.init.normal_(std=0.02) for every deep prompt in the official code

log = logging.getLogger(__name__)


def clamp_depth(depth: int, layers: int, tower: str) -> int:
    """A prompt depth beyond the tower's layers prompts every layer: the official code never uses the extra ones."""
    if depth > layers:
        log.info("%s prompt depth %d exceeds the tower's %d layers; prompting all %d", tower, depth, layers, layers)
    return min(depth, layers)


def split_init_words(text: TextTower, ctx_init: str, n_ctx: int) -> tuple[str, str]:
    """'a photo of a', n=2 -> ('a photo', 'of a'): the words the context starts from and the words kept fixed.

    The official code takes the first n tokens of the init words as the context and keeps the whole phrase in
    the tokenised prompt, so the remaining words stay as fixed tokens in front of the class name.
    """
    words = ctx_init.replace("_", " ").split()
    if not words:
        return "", ""
    total = token_count(text, " ".join(words), "Context init words")
    if n_ctx > total:
        raise ConfigError(
            f"ctx_init {ctx_init!r} gives {total} tokens but n_ctx is {n_ctx}; use n_ctx <= {total}, other "
            "words, or ctx_init='' for N(0, 0.02) context."
        )
    for cut in range(len(words) + 1):
        head = " ".join(words[:cut])
        if (token_count(text, head, "Context init words") if head else 0) == n_ctx:
            return head, " ".join(words[cut:])
    raise ConfigError(
        f"The first {n_ctx} tokens of ctx_init {ctx_init!r} end inside a word; choose n_ctx on a word boundary."
    )


class DeepTextPrompt(nn.Module):
    """Layer-0 context (``context.ctx``, [n, w]) and deep prompts for text layers 1..depth-1 (``deep``, [J-1, n, w])."""

    def __init__(
        self,
        text: TextTower,
        classnames: Sequence[str],
        n_ctx: int,
        depth: int,
        ctx_init: str = "a photo of a",
        class_chunk: int = 256,
        memory_mb: float = DEFAULT_TEXT_MEMORY_MB,
    ) -> None:
        super().__init__()
        if not getattr(text, "supports_deep_prompts", False):
            raise ConfigError(
                f"The text tower {type(text).__name__} has no deep-prompt seam; deep text prompts need an open_clip "
                "or Hugging Face CLIP text tower."
            )
        if depth < 1:
            raise ConfigError(f"Text prompt depth {depth} must be at least 1 (1: layer-0 context only, as CoOp).")
        depth = clamp_depth(depth, int(text.num_layers), "text")
        if n_ctx < 1:
            raise ConfigError(f"n_ctx = {n_ctx} must be at least 1 (learned text tokens per layer).")
        words, self.fixed_words = split_init_words(text, ctx_init, n_ctx)
        self.depth = depth
        self.context = ContextPrompt(
            text,
            self._prompt_names(classnames),
            n_ctx=n_ctx,
            init_words=words,
            class_chunk=class_chunk,
            memory_mb=memory_mb,
        )
        device = self.context.ctx.device
        self.deep = (
            nn.Parameter(torch.empty(depth - 1, n_ctx, text.width, device=device).normal_(0.0, DEEP_INIT_STD))
            if depth > 1
            else None
        )
        self.classnames = list(classnames)
        self._eval_cache = EvalCache()

    @property
    def n_ctx(self) -> int:
        return self.context.n_ctx

    def _prompt_names(self, classnames: Sequence[str]) -> list[str]:
        return [f"{self.fixed_words} {name}" if self.fixed_words else name for name in classnames]

    def set_classnames(self, text: TextTower, classnames: Sequence[str]) -> None:
        self.context.set_classnames(text, self._prompt_names(classnames))
        self.classnames = list(classnames)
        self._eval_cache.clear()

    def deep_prompts(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.deep.unbind(0)) if self.deep is not None else ()

    def layer_prompts(self) -> list[torch.Tensor]:
        """The text prompts of layers 0..J-1, each [n, w] (MaPLe couples vision prompts to these)."""
        return [self.context.ctx, *self.deep_prompts()]

    def forward(self, text: TextTower, chunk: int | None = None) -> torch.Tensor:
        """Normalised class features [C, D], classes in chunks of ``class_chunk`` (bounded memory)."""
        return self.context(text, chunk=chunk, deep=self.deep_prompts())

    def class_features(self, text: TextTower) -> torch.Tensor:
        """Normalised class features [C, D]; while nothing can train (eval mode, no grad) computed once and
        kept until the classes or any layer's prompts change."""
        if self.training or torch.is_grad_enabled():
            return self(text)
        key = EvalCache.key_for(self.classnames, self.layer_prompts())
        return self._eval_cache.get(key, lambda: self(text))
