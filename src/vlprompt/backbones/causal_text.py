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
    """Causal attention of suffix tokens over [their prefix, own suffix], without copying the prefix per row.

    query/key/value: projected suffixes [m*n, S, width], grouped by prefix (rows g*n .. g*n+n-1 read prefix g);
    prefix_key/prefix_value: projected prefixes [m, P, width]. Returns [m*n, S, width] before the output projection.
    The scores against the prefix are one matrix product per (prefix, head) over all n*S queries of that prefix;
    the scores against the row's own suffix are per row; one softmax runs over both parts, so the result is the
    softmax attention over the concatenated keys, exactly, while no [n, P, width] copy of the prefix exists.
    """
    rows, length, width = query.shape
    groups, prefix_length = prefix_key.shape[0], prefix_key.shape[1]
    per_group, head_dim = rows // groups, width // num_heads
    scale = head_dim**-0.5 if scale is None else scale

    def split(x: torch.Tensor) -> torch.Tensor:  # [m*n, S, width] -> [m, H, n, S, d]
        return x.reshape(groups, per_group, length, num_heads, head_dim).permute(0, 3, 1, 2, 4)

    q, k, v = split(query * scale), split(key), split(value)
    prefix_k = prefix_key.reshape(groups, prefix_length, num_heads, head_dim).permute(0, 2, 3, 1)  # [m, H, d, P]
    prefix_v = prefix_value.reshape(groups, prefix_length, num_heads, head_dim).transpose(1, 2)  # [m, H, P, d]
    flat_q = q.reshape(groups, num_heads, per_group * length, head_dim)
    to_prefix = (flat_q @ prefix_k).view(groups, num_heads, per_group, length, prefix_length)
    to_self = q @ k.transpose(-1, -2) + causal_mask(length, query.device, q.dtype)
    probs = torch.softmax(torch.cat([to_prefix, to_self], dim=-1), dim=-1)
    if dropout:
        probs = F.dropout(probs, p=dropout)
    from_prefix = probs[..., :prefix_length].reshape(groups, num_heads, per_group * length, prefix_length) @ prefix_v
    out = from_prefix.view(groups, num_heads, per_group, length, head_dim) + probs[..., prefix_length:] @ v
    return out.permute(0, 2, 3, 1, 4).reshape(rows, length, width)


def pack_rows(groups: Sequence[torch.Tensor]) -> torch.Tensor:
    """Groups of rows [r_g, L_g, width] (one length per group) -> all their tokens [sum r_g * L_g, width], unpadded.

    The linear layers and norms act per token, so they run once over the packed tokens (one large matrix product
    per weight instead of one per length group); only attention needs the rows back (``unpack_rows``).
    """
    return torch.cat([group.reshape(-1, group.shape[-1]) for group in groups])


def unpack_rows(tokens: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Inverse of ``pack_rows`` for the group shapes of ``like`` (the last dimension may differ)."""
    sizes = [group.shape[0] * group.shape[1] for group in like]
    return [
        part.reshape(group.shape[0], group.shape[1], tokens.shape[-1])
        for part, group in zip(torch.split(tokens, sizes), like)
    ]


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
        self, index: int, hidden: Sequence[torch.Tensor], prefix_hidden: torch.Tensor
    ) -> list[torch.Tensor]:
        """Layer ``index`` on groups of suffixes, each [m*n_g, S_g, width] (one length per group), that also attend
        to their prefix's layer input [m, P, width]; returns the groups' outputs in the same shapes."""

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
        every pair. Deep prompts sit inside the prefix, so it runs them once per layer too. Suffixes run in groups
        of equal own length (tokens up to their EOT), so no row carries padding through the layers.
        """
        grouped = prefix_embeddings.dim() == 3
        prefixes = prefix_embeddings if grouped else prefix_embeddings.unsqueeze(0)
        groups, prefix_length = prefixes.shape[0], prefixes.shape[1]
        n = suffix_embeddings.shape[0]
        check_deep_prompts(deep, self.num_layers, self.width, prefix_length + suffix_embeddings.shape[1])
        eot = self.eot_positions(suffix_token_ids).to(suffix_embeddings.device)
        if not self.prefix_path_applies(eot, prefix_length, deep):
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
        states = self.prefix_states(prefixes, deep)
        own = eot - prefix_length + 1
        groups_rows = [torch.nonzero(own == length).flatten() for length in torch.unique(own).tolist()]
        suffixes = [suffix_embeddings[rows, : int(own[rows[0]])] for rows in groups_rows]
        features = self.encode_suffixes(states, suffixes)[:, torch.argsort(torch.cat(groups_rows))]
        return features if grouped else features[0]

    def prefix_path_applies(self, eot: torch.Tensor, prefix_length: int, deep: DeepPrompts | None = None) -> bool:
        """Whether rows ending at ``eot`` can share a prefix of ``prefix_length``: exact towers, every EOT after
        the prefix, and deep prompts (positions start..start+n-1) inside it."""
        deep_length = self.start_tokens + max((int(t.shape[0]) for t in deep), default=0) if deep else 0
        return self.fast_paths_exact and int(eot.min()) >= prefix_length and prefix_length >= deep_length

    def prefix_states(self, prefixes: torch.Tensor, deep: DeepPrompts | None = None) -> list[torch.Tensor]:
        """The input of every layer at the prefix positions ([m, P, width] each, deep prompts inserted).

        Computed once per step; every suffix chunk reads them (``encode_suffixes``), so chunks can be run, and
        recomputed in backward, independently while the prefix runs once.
        """
        prefix = self.add_positions(prefixes)
        mask = causal_mask(prefix.shape[1], prefix.device, prefix.dtype)
        states = []
        for index in range(self.num_layers):
            prefix = insert_deep_prompt(index, prefix, deep, self.start_tokens)
            states.append(prefix)
            if index + 1 < self.num_layers:
                prefix = self.run_layer(index, prefix, mask)
        return states

    def encode_suffixes(
        self, states: Sequence[torch.Tensor], suffix_groups: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Features [m, sum n_g, feature_dim] of every prefix (``prefix_states``) followed by each suffix of every
        group [n_g, S_g, width], in the order given.

        Each group holds suffixes of one length, every one ending with its EOT token (rows cut to their own
        length): the pooled position is the last one, so no padding runs through the layers.
        """
        prefixes, prefix_length = states[0].shape[0], states[0].shape[1]
        hidden = []
        for group in suffix_groups:
            suffix = self.add_positions(group, start=prefix_length)
            hidden.append(suffix.unsqueeze(0).expand(prefixes, -1, -1, -1).flatten(0, 1))
        for index in range(self.num_layers):
            hidden = self.run_layer_after_prefix(index, hidden, states[index])
        pooled = [h[:, -1].unflatten(0, (prefixes, -1)) for h in hidden]
        return self.pool_project(torch.cat(pooled, dim=1))

    def suffix_activation_bytes(self, prefix_length: int, length: int, element_size: int = 4) -> int:
        """Bytes autograd keeps per suffix row of ``length`` tokens through ``encode_suffixes`` (an upper estimate).

        Per token and layer: about 16 width-sized tensors (norm inputs and outputs, q/k/v and their head layouts,
        attention output, the 4-wide MLP input, activation and product; 16.2 measured at ViT-B/16 width and on the
        tiny towers) and about three tensors per head over [prefix, own suffix] (scores, probabilities, the query
        they multiply), estimated as 17 widths + 3 per head and key. Tight, because the plan recomputes whatever
        the estimate puts past the memory budget: the earlier 22 widths overestimated by a third and made CoCoOp
        recompute at 1,000 classes within the default budget. tests/test_text_memory.py holds it against the
        measured saved bytes (at least them, at most 1.25x).
        """
        heads = self.attention_heads()
        per_token = 17 * self.width + 3 * heads * (prefix_length + length)
        return int(self.num_layers * length * per_token * element_size)

    @abc.abstractmethod
    def attention_heads(self) -> int:
        """Number of attention heads of the text layers (for the activation estimate)."""
