"""Where the learned context goes in each class's prompt: the placeholder prompt tokenised as the official CoOp
PromptLearner does (class at the end, the name's length counted on the name alone), and the context slots in it.

ContextPrompt (text.py) writes its vectors into these slots at every call; the layout itself is built once per
label space.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vlprompt.backbones.base import TextTower
from vlprompt.core.errors import ConfigError
from vlprompt.prompts.text_encoding import check_fits, end_token_positions, exact_fast_paths, token_count

logger = logging.getLogger(__name__)


CLASS_POSITIONS = ("end", "middle", "front")
PLACEHOLDER = "X"


def split_template(template: str) -> tuple[str, str]:
    """'a photo of a {}.' -> ('a photo of a', '.'): the context words and the suffix after the class name."""
    if template.count("{}") != 1:
        raise ConfigError(f"Template {template!r} must contain exactly one '{{}}' where the class name goes.")
    head, tail = template.split("{}")
    return head.strip(), tail.strip()


@dataclass
class PromptLayout:
    """Where the context vectors go in each class's tokenised placeholder prompt.

    ``slot[c, l]`` is the index of the context vector at position l of class c's prompt, or M (no context);
    ``token_ids`` are cut after the longest EOT when the adapter has the exact truncation path.
    """

    token_ids: torch.Tensor  # [C, L]
    slot: torch.Tensor  # [C, L]
    eot: torch.Tensor  # [C]


def build_layout(
    text: TextTower,
    classnames: Sequence[str],
    n_ctx: int,
    position: str,
    suffix: str,
    context_text: str = "",
) -> PromptLayout:
    """Tokenise the placeholder prompts of all classes and locate the context slots in each, as official CoOp does.

    The official PromptLearner tokenises ``"<context> <name>."`` with the class at the end, counts each name's
    tokens ALONE (``name_lens``), and for the middle / front positions moves the first ``name_len`` tokens after
    the context in front of (part of) the context. We do the same. With the class at the end every name works:
    a name ending in punctuation, e.g. "kite (bird of prey)", simply ends in the merged BPE token ")." and the
    prompt is exactly the official one. In the middle / front the official code then carries the merged token
    inside the class span, so no separate "." follows the context; we match it and log a warning naming the class.

    ``context_text`` (class position "end" only) replaces the "X X ..." placeholder: its first ``n_ctx`` tokens
    are the context slots and any tokens after them stay in the prompt as fixed text, as in the official CoOp
    code when the init words tokenise to more tokens than words.
    """
    if position not in CLASS_POSITIONS:
        raise ConfigError(f"class_position = {position!r} is not allowed; choose one of {list(CLASS_POSITIONS)}.")
    if context_text and position != "end":
        raise ConfigError(
            f"Context init words that tokenise to more tokens than words need class_position='end' "
            f"(got {position!r}); give words that are one token each, or put the class at the end."
        )
    suffix_len = token_count(text, suffix, "Prompt suffix") if suffix.strip() else 0
    lead = token_count(text, context_text, "Context init words") if context_text else n_ctx
    before = context_text or " ".join([PLACEHOLDER] * n_ctx)
    joiner = " " if suffix[:1].isalnum() else ""
    start = text.start_tokens  # the text begins after CLIP's SOS (1), at slot 0 for SigLIP's tokenizer
    texts, name_lens = [], []
    for name in classnames:
        name_len = token_count(text, name, "Class name")
        check_fits(text, start + lead + name_len + suffix_len + 1, name, f"a prompt with {n_ctx} context tokens")
        texts.append(" ".join(part for part in (before, name) if part) + joiner + suffix)
        name_lens.append(name_len)
    token_ids = text.tokenize(texts)
    eot = end_token_positions(text, token_ids)
    slot = torch.full(token_ids.shape, n_ctx, dtype=torch.long)
    slot[:, start : start + n_ctx] = torch.arange(n_ctx)
    if position != "end":
        first = n_ctx // 2 if position == "middle" else 0
        for row, (name, name_len) in enumerate(zip(classnames, name_lens)):
            order = _class_moved_order(
                int(eot[row]), token_ids.shape[1], start, n_ctx, first, name, name_len, suffix_len
            )
            token_ids[row], slot[row] = token_ids[row, order], slot[row, order]
    if exact_fast_paths(text):
        length = int(eot.max()) + 1
        token_ids, slot = token_ids[:, :length], slot[:, :length]
    return PromptLayout(token_ids=token_ids, slot=slot, eot=eot)


def _class_moved_order(
    eot: int, length: int, start: int, n_ctx: int, first: int, name: str, name_len: int, suffix_len: int
) -> torch.Tensor:
    """Positions of the class-at-end prompt in the order [start tokens, ctx[:first], class, ctx[first:], rest]
    (``start``: the tower's start tokens, CLIP's SOS).

    The class span is the ``name_len`` tokens right after the context (``name_len`` counted on the name alone),
    as in the official code; the EOT stays where it was, so pooling is unchanged.
    """
    own = eot - start - n_ctx  # tokens after the context, up to the EOT
    if own < name_len:
        raise ConfigError(
            f"Class name {name!r} has {name_len} tokens alone but only {own} inside the prompt, so a class span "
            "would swallow the end-of-text token (the official code would pool at a moved token). Rename the "
            "class or put it at the end (class_position='end')."
        )
    if own != name_len + suffix_len:
        logger.warning(
            "Class name %r merges with the prompt's suffix into one token; as in the official CoOp code, the merged "
            "token moves with the class name, so with the class in the middle or front no separate suffix follows "
            "the context for this class.", name,
        )
    cls = start + n_ctx
    return torch.cat(
        [
            torch.arange(0, start + first),
            torch.arange(cls, cls + name_len),
            torch.arange(start + first, cls),
            torch.arange(cls + name_len, length),
        ]
    )
