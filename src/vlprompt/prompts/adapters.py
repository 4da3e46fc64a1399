"""The parameter-efficient modules of visual PETL, each built here once and attached through the adapters' sites.

Every function takes an image tower that is already a private copy (``prompts.lora.share_weights_copy``: the
frozen tensors are shared with the caller's backbone, the module tree is not), changes that copy only, and returns
what it made trainable or added. Nothing here looks a module up by name: the places come from
``VisionTower.block_sites`` / ``tower_sites`` (backbones/base.py), the parameters from module types.

Definitions, each as its official code has it:
- **bias** (BitFit; KMnP/vpt ``tinytl-bias``): every bias of the tower trains: Linear, Conv, norm and
  ``nn.MultiheadAttention`` in-projection biases (the official code selects names containing "bias" in its ViT, whose
  only such parameters are exactly these).
- **Pfeiffer adapter** (KMnP/vpt ``vit_adapter/adapter_block.py``): after the MLP, before the residual add,
  ``y + up(GELU(down(y)))`` with d -> d/8 -> d Linears, all four tensors zero-initialised. With that init the
  gradient of ``down`` and of ``up.weight`` is zero forever (GELU(0) = 0 feeds ``up``, ``up.weight`` = 0 feeds
  ``down``), so the official adapter trains only ``up.bias``; ``init="lora"`` (kaiming-uniform ``down``, zero
  ``up``) is offered for an adapter that learns, and is not the official one.
- **AdaptFormer** (ShoufaChen/AdaptFormer ``models/adapter.py`` + ``custom_modules.py``, ``main_image.py``):
  beside the MLP sub-layer, ``s * up(dropout(ReLU(down(x))))`` added to the MLP's output, with x the *un-normalised*
  input of the sub-layer (the official code, adapter LayerNorm option "none"; the paper's equation, as we read it,
  feeds LN(x): ``branch_input="normed"``); ``down`` kaiming-uniform (a = sqrt 5) with zero bias, ``up`` zero;
  bottleneck 64, s = 0.1, dropout 0.1.
- **SSF** (dongzelian/SSF ``models/vision_transformer.py``): ``y * scale + shift`` after the patch projection, both
  block norms, qkv, the attention projection, fc1, fc2 and the final norm; scale ~ N(1, 0.02), shift ~ N(0, 0.02).
  On towers whose attention is a fused ``nn.MultiheadAttention`` there is no qkv place; the projection's scale-shift
  then sits after the whole attention module (whose last operation is out_proj, so it is the same place).
  ``merge_ssf`` folds every scale-shift into the module before it, giving back the library's own architecture.
- **LayerNorm tuning**: every LayerNorm's weight and bias train.
- **CLS-token tuning** (KMnP/vpt ``cls``): the class token trains.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import BlockSites, VisionTower
from vlprompt.core.errors import VlpromptError

# Module types whose bias BitFit trains, with the attribute that holds it. Subclasses count (open_clip's LayerNorm,
# nn.MultiheadAttention's out_proj Linear).
BIAS_OWNERS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Linear, "bias"),
    (nn.modules.conv._ConvNd, "bias"),
    (nn.LayerNorm, "bias"),
    (nn.GroupNorm, "bias"),
    (nn.modules.batchnorm._NormBase, "bias"),
    (nn.MultiheadAttention, "in_proj_bias"),
)
ADAPTER_INITS = ("zeros", "lora")
BRANCH_INPUTS = ("residual", "normed")
SSF_BLOCK_SITES = ("norm_attn", "attn_qkv", "attn_out", "norm_mlp", "mlp_in", "mlp_out")


def own_parameter(owner: nn.Module, attribute: str) -> nn.Parameter:
    """Give ``owner`` a private trainable copy of its frozen parameter ``attribute`` (the original stays shared
    with the caller's backbone, untouched)."""
    tensor = getattr(owner, attribute)
    fresh = nn.Parameter(tensor.detach().clone(), requires_grad=True)
    setattr(owner, attribute, fresh)
    return fresh


def _block_sites(tower: VisionTower) -> Iterator[BlockSites]:
    for index in range(tower.num_blocks):
        yield tower.block_sites(index)


# ----- parameters of the tower itself -----
def tune_biases(tower: nn.Module) -> list[nn.Parameter]:
    """BitFit: every bias of the listed module types becomes a private trainable parameter."""
    tuned = []
    for module in tower.modules():
        for kind, attribute in BIAS_OWNERS:
            if isinstance(module, kind) and getattr(module, attribute, None) is not None:
                tuned.append(own_parameter(module, attribute))
                break
    if not tuned:
        raise VlpromptError(f"The {type(tower).__name__} tower has no biases; BitFit has nothing to train.")
    return tuned


def tune_layernorms(tower: nn.Module) -> list[nn.Parameter]:
    """LayerNorm tuning: the weight and bias of every affine LayerNorm become private trainable parameters."""
    tuned = []
    for module in tower.modules():
        if isinstance(module, nn.LayerNorm):
            tuned += [own_parameter(module, name) for name in ("weight", "bias") if getattr(module, name) is not None]
    if not tuned:
        raise VlpromptError(f"The {type(tower).__name__} tower has no affine LayerNorm; LayerNorm tuning needs one.")
    return tuned


def tune_class_token(tower: VisionTower) -> list[nn.Parameter]:
    """CLS-token tuning: the tower's class token becomes a private trainable parameter."""
    sites = tower.tower_sites()
    sites.get("class_token")  # the clear error when this tower has no class token
    owner, attribute = sites.places["class_token"]
    return [own_parameter(owner, attribute)]


# ----- Pfeiffer adapter (VPT's Adapter row) -----
class PfeifferAdapter(nn.Module):
    """The MLP followed by its bottleneck adapter: ``y + up(GELU(down(y)))`` with ``y = mlp(x)``."""

    def __init__(self, mlp: nn.Module, width: int, reduction: int = 8, init: str = "zeros") -> None:
        super().__init__()
        if init not in ADAPTER_INITS:
            raise VlpromptError(f"Pfeiffer adapter init must be one of {ADAPTER_INITS}, got {init!r}.")
        self.mlp = mlp
        self.down = nn.Linear(width, width // reduction)
        self.up = nn.Linear(width // reduction, width)
        self.act = nn.GELU()
        for layer in (self.down, self.up):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if init == "lora":
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        return y + self.up(self.act(self.down(y)))


def attach_pfeiffer(tower: VisionTower, reduction: int = 8, init: str = "zeros") -> list[nn.Module]:
    """A Pfeiffer adapter after the MLP of every block; returns the adapters (their down/up are what trains)."""
    added = []
    for sites in _block_sites(tower):
        adapter = PfeifferAdapter(sites.get("mlp"), tower.width, reduction, init)
        sites.replace("mlp", adapter)
        added.append(adapter)
    return added


# ----- AdaptFormer -----
class AdaptFormerMLP(nn.Module):
    """The MLP sub-layer with AdaptFormer's parallel branch: ``mlp(norm(x)) + s * up(dropout(ReLU(down(b))))``.

    ``b`` is x (official code) or norm(x) (paper). The block's own norm moved in here (its place holds an identity),
    because the official branch reads the un-normalised input that only the norm sees.
    """

    def __init__(self, norm: nn.Module, mlp: nn.Module, width: int, bottleneck: int = 64, scale: float = 0.1,
                 dropout: float = 0.1, branch_input: str = "residual") -> None:
        super().__init__()
        if branch_input not in BRANCH_INPUTS:
            raise VlpromptError(f"AdaptFormer branch_input must be one of {BRANCH_INPUTS}, got {branch_input!r}.")
        self.norm = norm
        self.mlp = mlp
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        self.branch_input = branch_input
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(F.relu(self.down(x)))) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm(x)
        return self.mlp(normed) + self.branch(x if self.branch_input == "residual" else normed)


def attach_adaptformer(tower: VisionTower, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1,
                       branch_input: str = "residual") -> list[nn.Module]:
    """AdaptFormer's branch beside the MLP of every block; returns the branches' owners."""
    added = []
    for sites in _block_sites(tower):
        wrapped = AdaptFormerMLP(sites.get("norm_mlp"), sites.get("mlp"), tower.width, bottleneck, scale, dropout,
                                 branch_input)
        sites.replace("norm_mlp", nn.Identity())
        sites.replace("mlp", wrapped)
        added.append(wrapped)
    return added


# ----- SSF -----
class ScaleShift(nn.Module):
    """A module followed by SSF's ``y * scale + shift`` over the feature axis (last for tokens, 1 for conv maps).

    After a Linear, Conv or affine LayerNorm the scale-shift is computed inside the module's own call with the
    scaled weights (``scale * W``, ``scale * b + shift``): the same function, but autograd keeps only what the
    module itself keeps (its input), not the module's output as well, which a separate multiply would keep. That
    puts SSF's step below full fine-tuning's memory (benchmarks/bench_visual_step.py). After any other module
    (a fused ``nn.MultiheadAttention``, an identity) it is applied to the output; a tuple output
    (``(out, weights)``) is scaled in its first element only.
    """

    def __init__(self, base: nn.Module, dim: int, channel_axis: int = -1) -> None:
        super().__init__()
        self.base = base
        self.channel_axis = channel_axis
        self.scale = nn.Parameter(torch.empty(dim))
        self.shift = nn.Parameter(torch.empty(dim))
        nn.init.normal_(self.scale, mean=1.0, std=0.02)
        nn.init.normal_(self.shift, std=0.02)

    def apply_to(self, y: torch.Tensor) -> torch.Tensor:
        shape = [1] * y.dim()
        shape[self.channel_axis] = -1
        return y * self.scale.view(shape).to(y.dtype) + self.shift.view(shape).to(y.dtype)

    def _scaled_bias(self, bias: torch.Tensor | None) -> torch.Tensor:
        return self.shift if bias is None else bias * self.scale + self.shift

    def forward(self, *args, **kwargs):
        base = self.base
        if type(base) is nn.Linear:
            return F.linear(args[0], base.weight * self.scale[:, None], self._scaled_bias(base.bias))
        if type(base) is nn.Conv2d:
            weight = base.weight * self.scale.view(-1, 1, 1, 1)
            return base._conv_forward(args[0], weight, self._scaled_bias(base.bias))
        if isinstance(base, nn.LayerNorm) and base.elementwise_affine and type(base).forward is nn.LayerNorm.forward:
            return F.layer_norm(args[0], base.normalized_shape, base.weight * self.scale,
                                self._scaled_bias(base.bias), base.eps)
        out = base(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.apply_to(out[0]), *out[1:])
        return self.apply_to(out)


def _scale_shift(sites: BlockSites, site: str, dim: int, channel_axis: int = -1) -> ScaleShift:
    wrapper = ScaleShift(sites.get(site), dim, channel_axis)
    sites.replace(site, wrapper)
    return wrapper


def _output_width(module: nn.Module, width: int) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, nn.LayerNorm) and module.normalized_shape:
        return int(module.normalized_shape[-1])  # per-stage widths (Swin) differ from the tower's input width
    return width


def attach_ssf(tower: VisionTower) -> list[ScaleShift]:
    """SSF's scale-shifts at every place the official ViT has one that this tower exposes (see the module doc)."""
    added = []
    tower_sites = tower.tower_sites()
    added.append(
        _scale_shift(tower_sites, "patch_proj", _output_width(tower_sites.get("patch_proj"), tower.width), channel_axis=1)
    )
    for sites in _block_sites(tower):
        for site in SSF_BLOCK_SITES:
            if sites.has(site):
                added.append(_scale_shift(sites, site, _output_width(sites.get(site), tower.width)))
        if not sites.has("attn_out"):  # fused attention: after the module, i.e. after its out_proj
            added.append(_scale_shift(sites, "attn", tower.width))
    added.append(_scale_shift(tower_sites, "norm_final", _output_width(tower_sites.get("norm_final"), tower.width)))
    return added


def _fold(base: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module | None:
    """A new module equal to ``scale * base(x) + shift`` when ``base`` is affine in a foldable way, else None."""
    merged = copy.deepcopy(base)
    with torch.no_grad():
        if isinstance(merged, (nn.Linear, nn.modules.conv._ConvNd)):
            view = (-1,) + (1,) * (merged.weight.dim() - 1)
            merged.weight = nn.Parameter(merged.weight * scale.view(view), requires_grad=False)
            bias = merged.bias if merged.bias is not None else torch.zeros_like(shift)
            merged.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
            return merged
        if isinstance(merged, nn.LayerNorm) and merged.elementwise_affine:
            merged.weight = nn.Parameter(merged.weight * scale, requires_grad=False)
            bias = merged.bias if merged.bias is not None else torch.zeros_like(shift)
            merged.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
            return merged
        if isinstance(merged, nn.MultiheadAttention):
            folded = _fold(merged.out_proj, scale, shift)
            merged.out_proj = folded
            return merged
    return None


def merge_ssf(tower: nn.Module) -> nn.Module:
    """A copy of ``tower`` with every SSF scale-shift folded into the module before it (W' = diag(s)W, b' = s*b + t).

    The result is the library's own architecture with new weights (the SSF paper's re-parameterisation), computing
    the same function. A scale-shift after a module that is not affine-foldable (an identity final norm) stays.
    """
    merged = copy.deepcopy(tower)
    for parent in list(merged.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ScaleShift):
                folded = _fold(child.base, child.scale.detach(), child.shift.detach())
                if folded is not None:
                    setattr(parent, name, folded)
    merged.requires_grad_(False)
    return merged
