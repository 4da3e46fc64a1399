"""LoRA: low-rank updates W + s·B·A on the attention projections of a frozen backbone (CLIP-LoRA).

Defaults follow the official CLIP-LoRA code (MaxZanella/CLIP-LoRA, ``loralib/layers.py``):
- A [r, in] starts like an ``nn.Linear`` weight (kaiming-uniform, a = √5) and B [out, r] at zero, so training
  starts exactly at the frozen model;
- the scaling is s = alpha / √r (the official code; the LoRA paper's alpha / r is ``rank_scaling="rank"``);
- dropout acts on the LoRA branch's input only, with its own mask per projection, and only in training.

Open_clip / OpenAI CLIPs keep q, k and v fused in ``nn.MultiheadAttention.in_proj_weight`` (which HF PEFT cannot
wrap, peft#761); ``LoRAMultiheadAttention`` re-implements that module's forward step by step (one fused input
projection, the q/k/v deltas, PyTorch's scaled-dot-product attention, out_proj and its delta), so with B = 0 it
returns the module's own output. transformers' CLIP has separate q/k/v/out Linears: each is wrapped by
``LoRALinear``. Which module is which comes from the adapters' ``attention_projections`` seam. timm ViTs pack q, k,
v into one ``nn.Linear`` d -> 3d (the ``attn_qkv`` block site): ``LoRAPackedLinear`` adds the deltas to its q / k / v
output slices (``attach_lora_packed``), and the output projection (``attn_out``) is a plain ``LoRALinear``.

"Merged" mode computes W + s·B·A as new tensors and runs one matmul per projection; it never writes into the frozen
weights, which stay shared with the caller's backbone (``share_weights_copy``).
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import AttentionProjections, BlockSites
from vlprompt.core.errors import VlpromptError

RANK_SCALINGS = ("sqrt", "rank")
PROJECTIONS = ("q", "k", "v", "o")


class LoRADelta(nn.Module):
    """The low-rank branch s·B·A·dropout(x) of one projection ``in_features -> out_features``."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float,
                 rank_scaling: str = "sqrt") -> None:
        super().__init__()
        self.rank = rank
        self.scaling = alpha / (math.sqrt(rank) if rank_scaling == "sqrt" else rank)
        self.dropout = nn.Dropout(dropout)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        return (self.dropout(x) @ a.t() @ b.t()) * self.scaling

    def weight(self) -> torch.Tensor:
        """s·B·A [out, in]: the update a merged weight adds."""
        return (self.lora_B @ self.lora_A) * self.scaling


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus its LoRA branch (transformers' separate q/k/v/out projections); no branch at
    rank 0."""

    def __init__(self, base: nn.Linear, delta: LoRADelta | None) -> None:
        super().__init__()
        self.base = base
        self.delta = delta
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delta is None:
            return self.base(x)
        if self.merged:
            return F.linear(x, self.base.weight + self.delta.weight().to(self.base.weight.dtype), self.base.bias)
        return self.base(x) + self.delta(x)


class LoRAPackedLinear(nn.Module):
    """A frozen packed ``nn.Linear`` d -> 3d (outputs [q; k; v]) with LoRA branches on some of its three slices."""

    def __init__(self, base: nn.Linear, deltas: dict[str, LoRADelta]) -> None:
        super().__init__()
        if base.out_features != 3 * base.in_features:
            raise VlpromptError(
                f"A packed qkv projection maps d -> 3d; this Linear maps {base.in_features} -> {base.out_features}."
            )
        self.base = base
        self.deltas = nn.ModuleDict(deltas)
        self.merged = False

    def _merged_weight(self) -> torch.Tensor:
        parts = list(self.base.weight.chunk(3))
        for i, name in enumerate("qkv"):
            if name in self.deltas:
                parts[i] = parts[i] + self.deltas[name].weight().to(parts[i].dtype)
        return torch.cat(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return F.linear(x, self._merged_weight(), self.base.bias)
        out = self.base(x)
        if not self.deltas:
            return out
        zeros = None
        parts = []
        for name in "qkv":
            if name in self.deltas:
                parts.append(self.deltas[name](x))
            else:
                zeros = zeros if zeros is not None else out.new_zeros(*out.shape[:-1], self.base.in_features)
                parts.append(zeros)
        return out + torch.cat(parts, dim=-1)


def attach_lora_packed(owner_sites: BlockSites, targets: Sequence[str], rank: int, alpha: float, dropout: float,
                       rank_scaling: str = "sqrt") -> list[nn.Module]:
    """Wrap a block's packed ``attn_qkv`` (q, k, v targets) and ``attn_out`` ("o") through its ``BlockSites``."""
    wrappers: list[nn.Module] = []
    qkv = [name for name in targets if name in "qkv"]
    if qkv:
        base = owner_sites.get("attn_qkv")
        width = base.in_features
        deltas = {n: LoRADelta(width, width, rank, alpha, dropout, rank_scaling) for n in qkv} if rank > 0 else {}
        wrapper = LoRAPackedLinear(base, deltas)
        owner_sites.replace("attn_qkv", wrapper)
        wrappers.append(wrapper)
    if "o" in targets:
        base = owner_sites.get("attn_out")
        delta = LoRADelta(base.in_features, base.out_features, rank, alpha, dropout, rank_scaling) if rank > 0 else None
        wrapper = LoRALinear(base, delta)
        owner_sites.replace("attn_out", wrapper)
        wrappers.append(wrapper)
    return wrappers


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = masked) as the additive float mask nn.MultiheadAttention turns it into."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))


class LoRAMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (q, k, v fused in ``in_proj_weight``) with LoRA branches on q, k, v and/or o.

    Re-implements the module's forward in the order PyTorch's own does it; its attention dropout is off because
    the frozen backbone runs in eval mode. Returns ``(output, None)`` like a call with ``need_weights=False``.
    """

    def __init__(self, base: nn.MultiheadAttention, deltas: dict[str, LoRADelta]) -> None:
        super().__init__()
        if not base._qkv_same_embed_dim or base.bias_k is not None or base.add_zero_attn:
            raise VlpromptError(
                "LoRA supports nn.MultiheadAttention with one fused in_proj_weight and no bias_k / add_zero_attn "
                "(every CLIP attention block); this one was built with other options."
            )
        self.base = base
        self.deltas = nn.ModuleDict(deltas)
        self.batch_first = base.batch_first
        self.merged = False

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(in_proj_weight, out_proj weight), with the updates added in merged mode (new tensors)."""
        w_in, w_out = self.base.in_proj_weight, self.base.out_proj.weight
        if not self.merged:
            return w_in, w_out
        parts = list(w_in.chunk(3))
        for i, name in enumerate("qkv"):
            if name in self.deltas:
                parts[i] = parts[i] + self.deltas[name].weight().to(w_in.dtype)
        if "o" in self.deltas:
            w_out = w_out + self.deltas["o"].weight().to(w_out.dtype)
        return torch.cat(parts), w_out

    def _delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        if self.merged or name not in self.deltas:
            return None
        return self.deltas[name](x)

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        base = self.base
        self_attention = query is key and key is value
        if self.batch_first:  # work sequence-first, as nn.MultiheadAttention does
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        length, batch, width = query.shape
        source_length = key.shape[0]
        heads, head_dim = base.num_heads, width // base.num_heads
        w_in, w_out = self._weights()
        b_in = base.in_proj_bias
        if self_attention:
            q, k, v = F.linear(query, w_in, b_in).chunk(3, dim=-1)
        else:
            biases = b_in.chunk(3) if b_in is not None else (None, None, None)
            q, k, v = (F.linear(x, w, b) for x, w, b in zip((query, key, value), w_in.chunk(3), biases))
        deltas = [self._delta(name, x) for name, x in zip("qkv", (query, key, value))]
        q, k, v = (t if d is None else t + d for t, d in zip((q, k, v), deltas))
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, q.dtype)
            mask = mask.view(1, 1, length, source_length) if mask.dim() == 2 else mask.view(
                batch, heads, length, source_length)
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, q.dtype).view(batch, 1, 1, source_length)
            mask = padding if mask is None else mask + padding

        def split_heads(x: torch.Tensor, n: int) -> torch.Tensor:
            return x.reshape(n, batch * heads, head_dim).transpose(0, 1).view(batch, heads, n, head_dim)

        out = F.scaled_dot_product_attention(
            split_heads(q, length), split_heads(k, source_length), split_heads(v, source_length),
            attn_mask=mask, dropout_p=0.0, is_causal=is_causal and mask is None,
        )
        out = out.permute(2, 0, 1, 3).reshape(length * batch, width)
        projected = F.linear(out, w_out, base.out_proj.bias)
        delta = self._delta("o", out)
        if delta is not None:
            projected = projected + delta
        projected = projected.view(length, batch, width)
        return (projected.transpose(0, 1) if self.batch_first else projected), None


def attach_lora(projections: AttentionProjections, targets: Sequence[str], rank: int, alpha: float,
                dropout: float, rank_scaling: str = "sqrt") -> list[nn.Module]:
    """Wrap the ``targets`` ("q", "k", "v", "o") of one block's attention; returns the new wrapper module(s).
    Rank 0 wraps without branches (the wrappers then compute exactly the frozen projections)."""

    def delta(in_features: int, out_features: int) -> LoRADelta | None:
        return LoRADelta(in_features, out_features, rank, alpha, dropout, rank_scaling) if rank > 0 else None

    if projections.fused is not None:
        attention = projections.get(projections.fused)
        width = attention.embed_dim
        deltas = {name: delta(width, width) for name in targets} if rank > 0 else {}
        wrapper = LoRAMultiheadAttention(attention, deltas)
        projections.replace(projections.fused, wrapper)
        return [wrapper]
    wrappers = []
    if projections.packed is not None:
        qkv = [name for name in targets if name in "qkv"]
        if qkv:
            base = projections.get(projections.packed)
            width = base.in_features
            packed = LoRAPackedLinear(base, {n: delta(width, width) for n in qkv} if rank > 0 else {})
            projections.replace(projections.packed, packed)
            wrappers.append(packed)
        targets = [name for name in targets if name not in "qkv"]
    for name in targets:
        attribute = projections.separate[name]
        linear = projections.get(attribute)
        wrapper = LoRALinear(linear, delta(linear.in_features, linear.out_features))
        projections.replace(attribute, wrapper)
        wrappers.append(wrapper)
    return wrappers


def set_merged(wrappers: Sequence[nn.Module], merged: bool) -> None:
    """Switch every LoRA wrapper between W x + s·B·A·x (unmerged) and (W + s·B·A) x (merged)."""
    for wrapper in wrappers:
        wrapper.merged = merged


def share_weights_copy(module: nn.Module) -> nn.Module:
    """A structural copy of ``module`` whose parameters and buffers ARE the original's tensors.

    LoRA swaps attention modules inside a tower; doing it on a copy leaves the caller's backbone (shared by other
    methods, keyed by its weights hash in the feature cache) untouched, at no memory cost.
    """
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    for sub in module.modules():  # plain helper objects (a tokenizer) are shared too: only modules are copied
        for value in vars(sub).values():
            if not isinstance(value, (nn.Module, torch.Tensor, dict, list, tuple, set)):
                memo[id(value)] = value
    return copy.deepcopy(module, memo)
