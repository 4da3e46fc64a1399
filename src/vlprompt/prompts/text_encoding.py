"""Sending token sequences and prompt embeddings through a CLIP text tower, through the adapter seams only.

The exact speed-ups live behind ``encode_text_embeddings``: cutting sequences at the last end-of-text token and
encoding a shared [SOS, context] prefix once, where the tower supports them (the plain path otherwise). Hand-
crafted class features (one template, or the mean over templates) are built here too.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vlprompt.backbones.base import TextTower
from vlprompt.backbones.causal_text import CausalTextTower
from vlprompt.core.errors import ConfigError


def exact_fast_paths(text: TextTower) -> bool:
    """THE gate of the exact fast paths (truncation at the EOT, the shared prefix, length-grouped suffixes).

    They rest on a causal encoder pooled at the EOT (``TextTower.causal`` / ``pooling``): only a
    ``CausalTextTower`` that declares them exact (``fast_paths_exact``: no padding mask, no appended class token)
    takes them; every other tower (a bidirectional SigLIP tower pooled at the last slot, a CLIP pooled at a class
    token) takes the plain path, so results never change.
    """
    return (
        isinstance(text, CausalTextTower)
        and bool(text.fast_paths_exact)
        and text.causal
        and text.pooling in ("eot", "argmax")
    )


def encode_text_embeddings(
    text: TextTower, embeddings: torch.Tensor, token_ids: torch.Tensor, deep: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """THE text-encoder call: token embeddings [n, L, w] + ids [n, L] -> features [n, D] (not normalised).

    CLIP's text transformer is causal, so the pooled EOT output depends only on the tokens up to the EOT;
    where the exact fast paths apply, sequences are cut at the longest EOT of the batch.
    ``deep``: deep text prompts for layers 1..len(deep) (prompts/deep_text.py), on towers that support them.
    """
    options = {"deep": deep} if deep else {}
    if exact_fast_paths(text):
        return text.encode_embeddings(embeddings, token_ids, truncate=True, **options)
    return text.encode_embeddings(embeddings, token_ids, **options)


def end_token_positions(text: TextTower, token_ids: torch.Tensor) -> torch.Tensor:
    """Index of the end-of-text token in each row (context_length when a row has none).

    Not ``eot_positions``: a tower may pool elsewhere (an appended class token), while counting tokens needs
    the EOT token itself. Its id is read from the tokenisation of the empty text, [start tokens, EOT, ...]; a
    tokenizer that appends no end token (Gemma's, SigLIP 2) pads there, and the first pad is where the text ends.
    """
    start = text.start_tokens
    end_id = int(text.tokenize([""])[0, start])
    is_end = token_ids == end_id
    is_end[:, :start] = False
    found = is_end.any(dim=1)
    first = is_end.int().argmax(dim=1)
    return torch.where(found, first, torch.full_like(first, token_ids.shape[1]))


def token_count(text: TextTower, phrase: str, what: str) -> int:
    """Number of tokens of ``phrase`` without start/end tokens; raises when it alone fills the context."""
    ids = text.tokenize([phrase])
    eot = int(end_token_positions(text, ids)[0])
    if eot >= text.context_length - 1:
        raise ConfigError(
            f"{what} {phrase!r} tokenises to more than the text tower's context length "
            f"({text.context_length} tokens). Shorten it or use a backbone with a longer context."
        )
    return eot - text.start_tokens


def check_fits(text: TextTower, needed: int, classname: str, what: str) -> None:
    if needed > text.context_length:
        raise ConfigError(
            f"Class name {classname!r} does not fit the text context: {what} needs {needed} tokens but the text "
            f"tower holds {text.context_length}. Shorten the class name, the template or the context length n_ctx."
        )


@torch.no_grad()
def encode_texts(text: TextTower, texts: Sequence[str], chunk: int = 256) -> torch.Tensor:
    """Hand-written texts -> normalised features [n, D], ``chunk`` texts per encoder call."""
    device = next(text.parameters()).device
    outputs = []
    for start in range(0, len(texts), chunk):
        ids = text.tokenize(list(texts[start : start + chunk])).to(device)
        outputs.append(encode_text_embeddings(text, text.embed_tokens(ids), ids).float())
    return nn.functional.normalize(torch.cat(outputs), dim=-1)


@torch.no_grad()
def hand_crafted_features(
    text: TextTower, classnames: Sequence[str], templates: Sequence[str], chunk: int = 256
) -> torch.Tensor:
    """Normalised features of every template filled with every class name: [T, C, D].

    Checks up front that each filled template fits the context, so no prompt is silently truncated.
    """
    for template in templates:
        if template.count("{}") != 1:
            raise ConfigError(f"Template {template!r} must contain exactly one '{{}}' where the class name goes.")
        head, tail = template.split("{}")
        fixed = (token_count(text, head, "Template text") if head.strip() else 0) + (
            token_count(text, tail, "Template text") if tail.strip() else 0
        )
        for name in classnames:
            check_fits(text, fixed + token_count(text, name, "Class name") + 2, name, f"template {template!r}")
    texts = [template.format(name) for template in templates for name in classnames]
    return encode_texts(text, texts, chunk).view(len(templates), len(classnames), -1)


def ensemble_features(per_template: torch.Tensor) -> torch.Tensor:
    """[T, C, D] normalised -> [C, D]: mean over templates, renormalised (CLIP's prompt ensemble)."""
    return nn.functional.normalize(per_template.mean(dim=0), dim=-1)
