"""The shared shape of CLIP text towers (causal transformer pooled at one position) and its two exact fast paths.

Both fast paths rest on causality: the hidden state at position i depends only on positions <= i.
- Truncation: the pooled output depends only on tokens up to the pooled (EOT) position, so sequences are cut at
  the longest EOT position + 1 instead of running all context slots.
- Shared prefix: when every row starts with the same P embeddings ([SOS, ctx...]), the prefix's hidden states are
  the same for every row; they are computed once per layer and each row's own suffix tokens attend to
  [prefix keys/values, own suffix] with the causal mask. With m prefixes (CoCoOp: one context per image) and n
  suffixes (classes), the prefixes run m times instead of m*n.
Architecture adapters (open_clip, transformers) supply the per-layer pieces; the control flow lives here once.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import TextTower

DeepPrompts = Sequence[torch.Tensor]  # one [n_ctx, width] tensor per text layer 1..J-1


def insert_deep_prompt(
    index: int, hidden: torch.Tensor, deep: DeepPrompts | None, start: int = 1
) -> torch.Tensor:
    """Hidden states entering layer ``index`` with positions start..start+n-1 replaced by that layer's deep prompt.

    ``start`` is the tower's ``start_tokens``: right after CLIP's SOS (1), from slot 0 without one (SigLIP).

    Layer 0 takes its prompts from the embeddings; layer i >= 1 takes ``deep[i - 1]`` when there is one. The
    previous layer's outputs at those positions are discarded (MaPLe / IVLP ``text_layer`` blocks).
    """
    if not deep or index == 0 or index > len(deep):
        return hidden
    tokens = deep[index - 1].to(hidden.dtype)
    tokens = tokens.unsqueeze(0).expand(hidden.shape[0], -1, -1)
    return torch.cat([hidden[:, :start], tokens, hidden[:, start + tokens.shape[1] :]], dim=1)


def check_deep_prompts(deep: DeepPrompts | None, num_layers: int, width: int, length: int) -> None:
    """Deep prompts must fit: at most num_layers - 1 of them, each [n, width] with 1 + n <= sequence length."""
    if not deep:
        return
    if len(deep) > num_layers - 1:
        raise ValueError(f"{len(deep)} deep text prompts for a {num_layers}-layer text tower (at most {num_layers - 1})")
    for tensor in deep:
        if tensor.dim() != 2 or tensor.shape[1] != width or 1 + tensor.shape[0] > length:
            raise ValueError(
                f"deep text prompt of shape {tuple(tensor.shape)} does not fit [n <= {length - 1}, {width}]"
            )


def causal_mask(length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [length, length]: 0 on and below the diagonal, -inf above."""
    return torch.full((length, length), float("-inf"), device=device, dtype=dtype).triu_(1)


def attend_with_prefix(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    prefix_key: torch.Tensor,
    prefix_value: torch.Tensor,
    num_heads: int,
    scale: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Causal attention of suffix tokens over [their prefix, own suffix].

    query/key/value: projected suffixes [m*n, S, width], grouped by prefix (rows g*n .. g*n+n-1 read prefix g);
    prefix_key/prefix_value: projected prefixes [m, P, width]. Returns [m*n, S, width] before the output projection.
    """
    rows, length, width = query.shape
    groups, prefix_length = prefix_key.shape[0], prefix_key.shape[1]
    head_dim = width // num_heads

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], num_heads, head_dim).transpose(1, 2)

    def per_row(x: torch.Tensor) -> torch.Tensor:
        x = heads(x)
        return x.unsqueeze(1).expand(groups, rows // groups, *x.shape[1:]).reshape(rows, *x.shape[1:])

    keys = torch.cat([per_row(prefix_key), heads(key)], dim=2)
    values = torch.cat([per_row(prefix_value), heads(value)], dim=2)
    mask = torch.cat(
        [
            torch.zeros(length, prefix_length, device=query.device, dtype=query.dtype),
            causal_mask(length, query.device, query.dtype),
        ],
        dim=1,
    )
    out = F.scaled_dot_product_attention(
        heads(query), keys, values, attn_mask=mask, dropout_p=dropout, scale=scale
    )
    return out.transpose(1, 2).reshape(rows, length, width)


class CausalTextTower(TextTower):
    """A TextTower whose encoder is causal and pooled at ``eot_positions``; implements the fast paths once.

    Subclasses implement the per-architecture pieces below and set ``fast_paths_exact`` to False where the
    architecture breaks causality (bidirectional or padding masks, an appended class token); the fast paths then
    fall back to the plain path, so results never change.
    """

    fast_paths_exact: bool = True
    supports_deep_prompts: bool = True

    # ----- per-architecture pieces -----
    @property
    @abc.abstractmethod
    def num_layers(self) -> int: ...

    @abc.abstractmethod
    def add_positions(self, embeddings: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token embeddings [n, L, width] at positions start..start+L-1 -> layer-0 input."""

    @abc.abstractmethod
    def run_layer(self, index: int, hidden: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """Layer ``index`` on hidden [n, L, width] with an additive mask [L, L]."""

    @abc.abstractmethod
    def run_layer_after_prefix(
        self, index: int, hidden: torch.Tensor, prefix_hidden: torch.Tensor
    ) -> torch.Tensor:
        """Layer ``index`` on suffixes [m*n, S, width] that also attend to their prefix's layer input [m, P, width]."""

    @abc.abstractmethod
    def pool_project(self, pooled_hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and projection of the pooled hidden states [n, width] -> [n, feature_dim]."""

    def encode_full(
        self, embeddings: torch.Tensor, token_ids: torch.Tensor, deep: DeepPrompts | None = None
    ) -> torch.Tensor:
        """The plain path over every position, as the library computes it (override for non-causal variants)."""
        return self._encode_causal(embeddings, self.eot_positions(token_ids), deep)

    def _encode_causal(
        self, embeddings: torch.Tensor, eot: torch.Tensor, deep: DeepPrompts | None = None
    ) -> torch.Tensor:
        hidden = self.add_positions(embeddings)
        mask = causal_mask(hidden.shape[1], hidden.device, hidden.dtype)
        for index in range(self.num_layers):
            hidden = self.run_layer(index, insert_deep_prompt(index, hidden, deep, self.start_tokens), mask)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return self.pool_project(hidden[rows, eot.to(hidden.device)])

    # ----- shared control flow -----
    def encode_embeddings(
        self,
        embeddings: torch.Tensor,
        token_ids: torch.Tensor,
        truncate: bool = True,
        deep: DeepPrompts | None = None,
    ) -> torch.Tensor:
        """Features from token embeddings; ``truncate`` cuts at the longest EOT + 1 (exact under causality).

        ``deep``: deep prompts for layers 1..len(deep), written over positions 1..n at each layer's input.
        """
        check_deep_prompts(deep, self.num_layers, self.width, embeddings.shape[1])
        if not (truncate and self.fast_paths_exact):
            return self.encode_full(embeddings, token_ids, deep)
        eot = self.eot_positions(token_ids)
        return self._encode_causal(embeddings[:, : int(eot.max()) + 1], eot, deep)

    def encode_shared_prefix(
        self,
        prefix_embeddings: torch.Tensor,
        suffix_embeddings: torch.Tensor,
        suffix_token_ids: torch.Tensor,
        deep: DeepPrompts | None = None,
    ) -> torch.Tensor:
        """Features of rows [prefix, suffix_i]: each prefix's hidden states are computed once, not once per row.

        prefix_embeddings: [P, width] shared by all n rows -> returns [n, feature_dim]; or [m, P, width], m
        prefixes each combined with every suffix -> returns [m, n, feature_dim].
        suffix_embeddings: [n, S, width]. suffix_token_ids: [n, P+S], the full ids (prefix slots included) that
        locate the pooled token. Equals ``encode_embeddings(cat([prefix, suffix_i]), ids_i, deep=deep)`` for
        every pair. Deep prompts sit inside the prefix, so it runs them once per layer too.
        """
        grouped = prefix_embeddings.dim() == 3
        prefixes = prefix_embeddings if grouped else prefix_embeddings.unsqueeze(0)
        groups, prefix_length = prefixes.shape[0], prefixes.shape[1]
        n = suffix_embeddings.shape[0]
        check_deep_prompts(deep, self.num_layers, self.width, prefix_length + suffix_embeddings.shape[1])
        eot = self.eot_positions(suffix_token_ids).to(suffix_embeddings.device)
        deep_length = self.start_tokens + max((int(t.shape[0]) for t in deep), default=0) if deep else 0
        if not self.fast_paths_exact or int(eot.min()) < prefix_length or prefix_length < deep_length:
            full = torch.cat(
                [
                    prefixes.unsqueeze(1).expand(groups, n, -1, -1),
                    suffix_embeddings.unsqueeze(0).expand(groups, -1, -1, -1),
                ],
                dim=2,
            ).flatten(0, 1)
            ids = suffix_token_ids[:, : full.shape[1]].repeat(groups, 1)
            features = self.encode_embeddings(full, ids, deep=deep).unflatten(0, (groups, n))
            return features if grouped else features[0]
        suffix = self.add_positions(
            suffix_embeddings[:, : int(eot.max()) + 1 - prefix_length], start=prefix_length
        )
        suffix = suffix.unsqueeze(0).expand(groups, -1, -1, -1).flatten(0, 1)
        prefix = self.add_positions(prefixes)
        prefix_mask = causal_mask(prefix_length, prefix.device, prefix.dtype)
        for index in range(self.num_layers):
            prefix = insert_deep_prompt(index, prefix, deep, self.start_tokens)
            # the suffixes read the prefix's input to this layer, so update them first
            suffix = self.run_layer_after_prefix(index, suffix, prefix)
            if index + 1 < self.num_layers:
                prefix = self.run_layer(index, prefix, prefix_mask)
        rows = torch.arange(groups * n, device=suffix.device)
        features = self.pool_project(suffix[rows, (eot - prefix_length).repeat(groups)])
        features = features.unflatten(0, (groups, n))
        return features if grouped else features[0]
