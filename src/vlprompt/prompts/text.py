"""Text prompts for CLIP: the one place where prompts are assembled and sent through the text tower.

Every CLIP text method (zero-shot, CoOp, CoCoOp, ProGrad, KgCoOp, the mixture) builds its class features
here, through the adapter seams ``tokenize`` / ``embed_tokens`` / ``encode_embeddings`` only; the calls into
the text tower themselves are in text_encoding.py.

A learned prompt is ``[SOS, ctx_1..ctx_M, CLASS, suffix, EOT]`` (class position "end"), or with the class
name in the middle of the context or in front of it. The placeholder prompt (context written as "X" words)
is tokenised once per label space; its token embeddings are kept as a buffer, and at every call the learned
context vectors are written into the context slots. Pooling happens at the EOT position of the placeholder
prompt, which the adapter finds from the token ids.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlprompt.backbones.base import TextTower
from vlprompt.core.errors import CheckpointError, ConfigError
from vlprompt.data.base import display_name
from vlprompt.prompts.text_encoding import (  # noqa: F401  (some names re-exported for methods)
    check_fits,
    encode_text_embeddings,
    encode_texts,
    end_token_positions,
    ensemble_features,
    exact_fast_paths,
    hand_crafted_features,
    token_count,
)
from vlprompt.prompts.text_layout import PLACEHOLDER, build_layout
from vlprompt.prompts.text_plan import (
    DEFAULT_TEXT_MEMORY_MB,
    pack_calls,
    plan_suffix_chunks,
    shared_prefix_length,
)

logger = logging.getLogger(__name__)

INIT_ALIGNS = ("fit", "right")


def init_context_words(text: TextTower, words: str) -> tuple[str, int, int]:
    """(cleaned words, word count, token count) of context init words, counted as the official CoOp code does.

    Underscores become spaces; the number of learned slots is the number of WORDS (``len(words.split(" "))``)
    and they take the embeddings of the first that many TOKENS after SOS. When a word tokenises to several
    tokens ("pet," is "pet" + ","), the tokens past the slots stay in the prompt as fixed text.
    """
    cleaned = " ".join(display_name(words).split())
    n_words = len(cleaned.split(" ")) if cleaned else 0
    n_tokens = token_count(text, cleaned, "Context init words") if cleaned else 0
    if cleaned and n_tokens < n_words:
        raise ConfigError(
            f"Context init words {words!r} give fewer tokens ({n_tokens}) than words ({n_words}); the official "
            "code would then learn from the end-of-text embedding. Give plain words."
        )
    return cleaned, n_words, n_tokens


class ContextPrompt(nn.Module):
    """Learned context vectors (CoOp): shared by all classes or class-specific, at a chosen class position.

    ``init_words`` (e.g. "a photo of a") start the context from their token embeddings, with the official
    code's counting (see :func:`init_context_words`): ``init_align="fit"`` (CoOp, CoCoOp, KgCoOp) makes M the
    word count; ``"right"`` (ProGrad) keeps ``n_ctx`` slots, zeros first and the words' embeddings in the last
    slots. Without words the context is drawn from N(0, 0.02). ``suffix`` is the text after the class name (".").
    The text tower is passed to each call rather than stored, so it never enters this module's state.
    ``shared_prefix``: with shared context before the class name, [SOS, ctx] and any fixed words after it that
    every class shares are the same prefix for every class (CoCoOp: for every class of one image); where the
    exact fast paths apply it is computed once per call, and the classes' own tokens run grouped by length,
    unpadded (prompts/text_plan.py).
    ``memory_mb``: the activation memory a training step may hold for the class prompts; calls beyond it are
    recomputed in backward. ``class_chunk``: classes per encoder call on the plain path and without gradients.
    """

    def __init__(
        self,
        text: TextTower,
        classnames: Sequence[str],
        n_ctx: int = 16,
        init_words: str = "",
        suffix: str = ".",
        position: str = "end",
        class_specific: bool = False,
        class_chunk: int = 256,
        shared_prefix: bool = True,
        init_align: str = "fit",
        memory_mb: float = DEFAULT_TEXT_MEMORY_MB,
    ) -> None:
        super().__init__()
        if memory_mb <= 0:
            raise ConfigError(f"memory_mb = {memory_mb} must be positive (megabytes of text activations per step).")
        if class_chunk < 1:
            raise ConfigError(f"class_chunk = {class_chunk} must be at least 1.")
        if init_align not in INIT_ALIGNS:
            raise ConfigError(f"init_align = {init_align!r} is not allowed; choose one of {list(INIT_ALIGNS)}.")
        self.position = position
        self.suffix = suffix
        self.class_specific = class_specific
        self.class_chunk = class_chunk
        self.memory_mb = memory_mb
        self.shared_prefix = shared_prefix
        self.context_text = ""
        device = next(text.parameters()).device
        words, n_words, n_tokens = init_context_words(text, init_words)
        if n_words:
            with torch.no_grad():
                ids = text.tokenize([words]).to(device)
                start = text.start_tokens
                vectors = text.embed_tokens(ids)[0, start : start + n_words].detach().float().clone()
            if init_align == "right":
                if n_ctx < n_words:
                    raise ConfigError(
                        f"n_ctx = {n_ctx} is smaller than the {n_words} init words {words!r}; right-aligned init "
                        "(ProGrad) needs n_ctx >= the number of words."
                    )
                vectors = torch.cat([vectors.new_zeros(n_ctx - n_words, vectors.shape[1]), vectors])
            else:
                n_ctx = n_words
            if n_tokens > n_words:
                self.context_text = " ".join([PLACEHOLDER] * (n_ctx - n_words) + [words])
                logger.info(
                    "Context init %r: %d words but %d tokens; the first %d tokens are learned, the rest stay fixed "
                    "text (as in the official code).", words, n_words, n_tokens, n_words,
                )
        else:
            if n_ctx < 1:
                raise ConfigError(f"n_ctx = {n_ctx} must be at least 1 (the number of learned context tokens).")
            vectors = torch.empty(n_ctx, text.width, device=device).normal_(0.0, 0.02)
        self.n_ctx = n_ctx
        if class_specific:
            vectors = vectors.unsqueeze(0).repeat(len(classnames), 1, 1)
        self.ctx = nn.Parameter(vectors)
        self.num_classes = 0
        self._eval_cache = EvalCache()
        self.set_classnames(text, classnames)

    @torch.no_grad()
    def set_classnames(self, text: TextTower, classnames: Sequence[str]) -> None:
        """(Re)build the placeholder prompts for a new class list; shared context transfers, CSC does not."""
        if self.class_specific and self.ctx.shape[0] != len(classnames):
            raise CheckpointError(
                f"Class-specific context was trained for {self.ctx.shape[0]} classes and cannot serve "
                f"{len(classnames)} other classes; use shared context (class_specific=false) to move to new classes."
            )
        device = self.ctx.device
        layout = build_layout(text, classnames, self.n_ctx, self.position, self.suffix, self.context_text)
        self.classnames = list(classnames)
        self.num_classes = len(classnames)
        self.register_buffer("token_ids", layout.token_ids.to(device), persistent=False)
        self.register_buffer("slot", layout.slot.to(device), persistent=False)
        self.register_buffer("eot", layout.eot.to(device), persistent=False)
        self.register_buffer("base", text.embed_tokens(self.token_ids).detach(), persistent=False)
        self.prefix_length = shared_prefix_length(self.token_ids, self.eot, text.start_tokens + self.n_ctx)
        self._eval_cache.clear()

    def class_features(self, text: TextTower) -> torch.Tensor:
        """Normalised class features [C, D]; while nothing can train (eval mode, no grad) computed once and
        kept until the classes or the context change, so evaluation does not re-encode every class per batch."""
        if self.training or torch.is_grad_enabled():
            return self(text)
        key = EvalCache.key_for(self.classnames, [self.ctx])
        return self._eval_cache.get(key, lambda: self(text))

    def _encode_chunk(
        self, text: TextTower, ctx: torch.Tensor, start: int, stop: int, deep: tuple[torch.Tensor, ...] = ()
    ) -> torch.Tensor:
        """Plain path: features of classes [start, stop) for context ``ctx`` [*, 1 or C, M, w] -> [*, stop-start, D]."""
        if self.class_specific:
            ctx = ctx[..., start:stop, :, :]
        ids = self.token_ids[start:stop]
        slot = self.slot[start:stop]
        length = int(self.eot[start:stop].max()) + 1 if exact_fast_paths(text) else ids.shape[1]
        ids, slot, base = ids[:, :length], slot[:, :length], self.base[start:stop, :length]
        count, width = stop - start, base.shape[-1]
        batch_shape = ctx.shape[:-3]
        padded = torch.cat([ctx, ctx.new_zeros(*ctx.shape[:-2], 1, width)], dim=-2)
        padded = padded.expand(*batch_shape, count, self.n_ctx + 1, width)
        index = slot.expand(*batch_shape, count, length).unsqueeze(-1).expand(*batch_shape, count, length, width)
        filled = torch.gather(padded, -2, index)
        embeddings = torch.where((slot < self.n_ctx).unsqueeze(-1), filled.to(base.dtype), base)
        flat = embeddings.reshape(-1, length, width)
        flat_ids = ids.expand(*batch_shape, count, length).reshape(-1, length)
        features = encode_text_embeddings(text, flat, flat_ids, deep)
        return features.reshape(*batch_shape, count, features.shape[-1])

    def _prefix_path(self, text: TextTower, ctx: torch.Tensor, deep: tuple[torch.Tensor, ...]) -> bool:
        """Shared context right after SOS (one context, or one per image) on a tower with the exact fast paths."""
        return (
            self.shared_prefix
            and self.position == "end"
            and not self.class_specific
            and exact_fast_paths(text)
            and text.prefix_path_applies(self.eot, self.prefix_length, deep)
        )

    def plan(self, text: TextTower, prefixes: int, chunk: int | None, trained: bool):
        """The encoder calls of one step on the prefix path (see prompts/text_plan.py)."""
        prefix_length = self.prefix_length
        budget = self.memory_mb * 2**20 if trained else None
        max_rows = chunk or (None if trained else self.class_chunk)
        return plan_suffix_chunks(
            self.eot - prefix_length + 1,
            lambda length: prefixes * text.suffix_activation_bytes(prefix_length, length),
            budget,
            max_rows,
        )

    def _encode_prefixed(
        self, text: TextTower, ctx: torch.Tensor, chunk: int | None, deep: tuple[torch.Tensor, ...], trained: bool
    ) -> torch.Tensor:
        """[SOS, ctx, shared words] once per context (prefix_states), then every class's own tokens in length
        groups."""
        start, end = text.start_tokens, text.start_tokens + self.n_ctx
        sos, words = self.base[0, :start], self.base[0, end : self.prefix_length]
        contexts = ctx.reshape(-1, self.n_ctx, ctx.shape[-1]).to(sos.dtype)  # [m, M, w]
        count = contexts.shape[0]
        prefixes = torch.cat([sos.expand(count, -1, -1), contexts, words.expand(count, -1, -1)], dim=1)
        states = text.prefix_states(prefixes, deep)
        parts, order = [], []
        for call in pack_calls(self.plan(text, prefixes.shape[0], chunk, trained), chunk):
            rows = tuple(part.rows.to(self.base.device) for part in call)
            if call[0].recompute:  # only the row indices enter the checkpoint: it keeps no suffix embeddings
                parts.append(checkpoint(self._encode_suffixes, text, states, rows, use_reentrant=False))
            else:
                parts.append(self._encode_suffixes(text, states, rows))
            order += [part.rows for part in call]
        features = torch.cat(parts, dim=1)[:, torch.argsort(torch.cat(order)).to(self.base.device)]
        return features.reshape(*ctx.shape[:-3], self.num_classes, features.shape[-1])

    def _encode_suffixes(
        self, text: TextTower, states: list[torch.Tensor], rows: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """One encoder call over several length groups (their tokens packed, no padding)."""
        start = self.prefix_length
        lengths = (self.eot[[int(r[0]) for r in rows]] - start + 1).tolist()
        return text.encode_suffixes(states, [self.base[r, start : start + n] for r, n in zip(rows, lengths)])

    def forward(
        self,
        text: TextTower,
        bias: torch.Tensor | None = None,
        chunk: int | None = None,
        deep: Sequence[torch.Tensor] = (),
    ) -> torch.Tensor:
        """Normalised class features: [C, D], or [B, C, D] with a per-image ``bias`` [B, w] (CoCoOp).

        On the prefix path the calls come from the memory budget (``plan``; ``chunk`` caps classes per call).
        On the plain path classes go ``chunk`` (default ``class_chunk``) at a time, and under autograd with
        several chunks each is recomputed in backward, so memory stays bounded for many classes.
        ``deep``: deep text prompts [n_ctx, w] for text layers 1..len(deep), over the context positions.
        """
        deep = tuple(deep)
        if deep and not (self.position == "end" and getattr(text, "supports_deep_prompts", False)):
            raise ConfigError(
                "Deep text prompts sit right after SOS: they need class_position 'end' and a text tower that "
                f"supports them ({type(text).__name__} does not, or class_position is {self.position!r})."
            )
        ctx = self.ctx if self.class_specific else self.ctx.unsqueeze(0)
        if bias is not None:
            ctx = ctx.unsqueeze(0) + bias[:, None, None, :].to(ctx.dtype)
        trained = torch.is_grad_enabled() and (ctx.requires_grad or any(t.requires_grad for t in deep))
        if self._prefix_path(text, ctx, deep):
            return nn.functional.normalize(self._encode_prefixed(text, ctx, chunk, deep, trained).float(), dim=-1)
        chunk = chunk or self.class_chunk
        bounds = [(s, min(s + chunk, self.num_classes)) for s in range(0, self.num_classes, chunk)]
        use_checkpoint = len(bounds) > 1 and trained
        parts = []
        for start, stop in bounds:
            if use_checkpoint:
                parts.append(checkpoint(self._encode_chunk, text, ctx, start, stop, deep, use_reentrant=False))
            else:
                parts.append(self._encode_chunk(text, ctx, start, stop, deep))
        return nn.functional.normalize(torch.cat(parts, dim=-2).float(), dim=-1)


class EvalCache:
    """Class features kept between evaluation batches; rebuilt when the key (classes, parameter versions) moves.

    The key holds each trained tensor's in-place version counter, so an optimiser step or a state-dict load
    invalidates the cache without any hook.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value = None

    @staticmethod
    def key_for(classnames: Sequence[str], parameters: Sequence[torch.Tensor], *extra) -> tuple:
        return (tuple(classnames), tuple((p.data_ptr(), p._version, str(p.device)) for p in parameters), *extra)

    def get(self, key: tuple, compute):
        if self.key != key:
            self.value = compute()
            self.key = key
        return self.value

    def clear(self) -> None:
        self.key, self.value = None, None
