"""The seams every backbone adapter exposes; the only contract method code may rely on.

An image tower is a token pipeline: ``embed`` (patchify, prefix tokens, position embedding, pre-norm)
-> ``block(i, tokens)`` for i in range(num_blocks) -> ``finalize`` (final norm, pooling, projection).
Visual prompts are inserted right after the ``num_prefix_tokens`` prefix tokens, so the token layout seen
by blocks and by ``finalize`` is ``[prefix, prompts, patches]``.

A text tower turns token ids into features through ``embed_tokens`` -> ``encode_embeddings``, which lets
text-prompt methods replace some token embeddings by learned context vectors. Towers with
``supports_deep_prompts`` also take ``deep=[p_1, ..., p_{J-1}]`` in ``encode_embeddings``: learned tokens that
overwrite the positions right after SOS at the input of text layers 1..J-1 (deep text prompts; layer 0's are
the context embeddings), with pooling unchanged.
"""
from __future__ import annotations

import abc
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from vlprompt.backbones.prompt_support import PROMPT_READOUTS, InputStem, PromptSupport
from vlprompt.core.errors import VlpromptError


@dataclass(frozen=True)
class AttentionProjections:
    """Where one block's self-attention projections live, as the adapter knows them (the LoRA seam).

    Either ``fused`` names an ``nn.MultiheadAttention`` attribute of ``owner`` (OpenAI / open_clip layout: q, k, v
    stacked in its ``in_proj_weight``, o its ``out_proj``), or ``separate`` maps "q", "k", "v", "o" to the names of
    ``nn.Linear`` attributes of ``owner`` (transformers' CLIP), or ``packed`` names one ``nn.Linear`` d -> 3d
    producing [q; k; v] (timm's ``qkv``) with o in ``separate``. ``replace`` swaps a module in, so a method can
    wrap a projection without knowing the library's module tree.
    """

    owner: nn.Module
    fused: str | None = None
    packed: str | None = None
    separate: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> nn.Module:
        return getattr(self.owner, name)

    def replace(self, name: str, module: nn.Module) -> None:
        setattr(self.owner, name, module)


# The named places of a transformer block where parameter-efficient modules attach (bias, adapter, AdaptFormer,
# SSF, LoRA, LayerNorm tuning). Every adapter maps the same names onto its library's modules; a place a block
# does not have is simply absent from its BlockSites.
BLOCK_SITES = (
    "norm_attn",  # the norm before attention (timm norm1, open_clip ln_1)
    "attn",  # the whole attention sub-layer: tokens [B, T, d] -> [B, T, d], before the residual add
    "attn_qkv",  # a packed nn.Linear d -> 3d producing [q; k; v] (timm); absent where q/k/v are separate or fused
    "attn_out",  # the attention output projection nn.Linear d -> d
    "norm_mlp",  # the norm before the MLP (timm norm2, open_clip ln_2)
    "mlp",  # the whole MLP sub-layer: [B, T, d] -> [B, T, d], before the residual add
    "mlp_in",  # the MLP's first nn.Linear d -> hidden (absent for gated MLPs with two input projections)
    "mlp_out",  # the MLP's last nn.Linear hidden -> d
)
# The block calls ``mlp(norm_mlp(x))`` with nothing in between, so a module that needs the MLP sub-layer's
# un-normalised input (AdaptFormer's parallel branch) moves the norm inside an ``mlp`` wrapper and leaves an identity.

# The named places of the tower outside its blocks, in the same form (``VisionTower.tower_sites``): SSF scales the
# patch projection's output and the final norm's; CLS-token tuning trains the class token (an nn.Parameter place).
TOWER_SITES = (
    "patch_proj",  # the patch projection nn.Conv2d 3 -> d (timm patch_embed.proj, open_clip conv1)
    "class_token",  # the learned class token nn.Parameter (timm cls_token, open_clip class_embedding)
    "norm_final",  # the norm after the last block (timm norm, open_clip ln_post)
)


@dataclass(frozen=True)
class BlockSites:
    """Where one block's named places (``BLOCK_SITES``) live, as the adapter knows them.

    ``places`` maps a site name to ``(owner, attribute)``: the module ``getattr(owner, attribute)`` is the site.
    ``replace`` swaps a wrapper in (an AdaptFormer branch beside ``mlp``, an SSF scale-shift after ``attn_qkv``),
    so parameter-efficient modules never search a library's module tree by name. ``known`` is the vocabulary the
    names come from: ``BLOCK_SITES`` for a block, ``TOWER_SITES`` for the tower's own places.
    """

    places: dict[str, tuple[nn.Module, str]]
    known: tuple[str, ...] = BLOCK_SITES

    def __post_init__(self) -> None:
        unknown = sorted(set(self.places) - set(self.known))
        if unknown:
            raise ValueError(f"unknown sites {unknown}; known: {', '.join(self.known)}")

    def has(self, site: str) -> bool:
        return site in self.places

    def get(self, site: str) -> nn.Module:
        """The module at ``site`` (an nn.Parameter for ``class_token``)."""
        if site not in self.places:
            raise VlpromptError(
                f"This {'block' if self.known == BLOCK_SITES else 'tower'} has no '{site}' place (it has "
                f"{', '.join(self.places) or 'none'}); the module that "
                "needs it cannot attach to this backbone."
            )
        owner, attribute = self.places[site]
        return getattr(owner, attribute)

    def replace(self, site: str, module: nn.Module) -> None:
        self.get(site)  # the error above for a missing site
        owner, attribute = self.places[site]
        setattr(owner, attribute, module)


def no_block_sites(tower: nn.Module) -> VlpromptError:
    return VlpromptError(
        f"The {type(tower).__name__} adapter does not expose named block places (norms, attention, MLP), so "
        "bias / adapter / AdaptFormer / SSF / LoRA / LayerNorm tuning cannot attach to it."
    )


def no_attention_seam(tower: nn.Module) -> VlpromptError:
    return VlpromptError(
        f"The {type(tower).__name__} adapter does not expose its attention projections, so LoRA cannot attach to "
        "it. LoRA supports open_clip (CLIP, CustomTextCLIP) and transformers CLIPModel towers."
    )


@dataclass(frozen=True)
class PreprocessConfig:
    """How images must be prepared for a backbone (read from the backbone library's own config)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0


class VisionTower(nn.Module, abc.ABC):
    """Adapter over a ViT image tower. Subclasses set the attributes and implement the three seams."""

    width: int  # token width d
    num_blocks: int
    num_prefix_tokens: int  # class/register tokens that precede the patches
    patch_size: int
    feature_dim: int  # size of finalize()'s output
    pooling: str  # "cls", "mean" or "map" (attention pooling: a learned query over the tokens, SigLIP)

    @abc.abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] -> tokens [B, num_prefix_tokens + num_patches, width], ready for block 0."""
        ...

    @abc.abstractmethod
    def block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        """Run block ``index`` on tokens [B, T, width] (T may include prompt tokens)."""
        ...

    @abc.abstractmethod
    def block_modules(self) -> Sequence[nn.Module]:
        """The blocks as modules, for partial fine-tuning and forward hooks."""
        ...

    def pre_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """The per-token norm ``embed`` applies last (CLIP's ln_pre), for tokens inserted before it.

        IVLP, MaPLe and PromptSRC append their first-layer vision prompts before ln_pre, so those prompts pass
        through it; since the norm acts per token, applying it to them alone is exact.
        """
        raise VlpromptError(
            f"{type(self).__name__} does not expose its pre-norm; vision-language deep prompts (ivlp, maple, "
            "promptsrc) need a CLIP image tower (open_clip, hf or world:clip)."
        )

    @abc.abstractmethod
    def finalize(self, tokens: torch.Tensor, num_prompts: int = 0, pool_prompts: bool = False) -> torch.Tensor:
        """Tokens after the last block -> features [B, feature_dim].

        ``num_prompts`` prompt tokens sit right after the prefix tokens. With mean pooling, ``pool_prompts``
        says whether they enter the mean (VPT's MAE readout includes them); with MAP pooling, whether the pooling
        query attends to them (it always attends to the patches); CLS pooling ignores both.
        """
        ...

    def patch_grid(self, tokens: torch.Tensor, num_prompts: int, grid: tuple[int, int]) -> torch.Tensor:
        """Tokens after any block [B, T, width] -> the patch tokens as a feature map [B, width, h, w].

        Prefix (class, register) and prompt tokens are dropped; the patches follow them in row-major order in
        every adapter's layout, so dense heads (segmentation) read the same grid whatever the library.
        """
        h, w = grid
        patches = tokens[:, self.num_prefix_tokens + num_prompts :]
        if patches.shape[1] != h * w:
            raise VlpromptError(
                f"{type(self).__name__}: {patches.shape[1]} patch tokens after {self.num_prefix_tokens} prefix and "
                f"{num_prompts} prompt tokens do not form the {h}x{w} grid of the input; give images whose sides "
                f"are multiples of the patch size {self.patch_size} at the backbone's input size."
            )
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
    def prompt_support(self) -> PromptSupport:
        """What visual prompting this tower carries. Default: a plain ViT token pipeline, where prompt tokens
        may be prepended after the prefix or added to every token, shallow or deep; pixel locations need the
        patch-embedding seam (``patch_tokens``), which an adapter opts into by overriding this."""
        pixel = (
            f"it needs the patch-embedding seams (patch_tokens, input_stem, embed_any_size), which the "
            f"{type(self).__name__} adapter does not expose; use a timm ViT"
        )
        return PromptSupport(
            kind="sequence",
            block_widths=(self.width,) * self.num_blocks,
            locations=("prepend", "add", "add-1"),
            deep_locations=("prepend", "add", "add-1"),
            refusals={
                "prepend-pixel": pixel,
                "below": pixel,
                "pad": pixel,
                **dict.fromkeys(PROMPT_READOUTS[1:], "it needs the mean-readout seam (mean_readout)"),
            },
        )

    def transition(self, index: int, tokens: torch.Tensor, num_prompts: int) -> torch.Tensor:
        """What happens to the tokens between block ``index - 1`` and block ``index`` when ``num_prompts`` prompt
        tokens follow the prefix. Identity for ViTs; Swin merges patches (and widens the prompts) at a stage start.
        Towers that override it include it in ``block`` so the plain pipeline stays embed -> block(i) -> finalize."""
        return tokens

    def prompted_block(self, index: int, tokens: torch.Tensor, num_prompts: int) -> torch.Tensor:
        """Block ``index`` on tokens holding ``num_prompts`` prompt tokens after the prefix (without the
        ``transition``). For a ViT prompts are ordinary tokens of the sequence; Swin shows them to every window."""
        return self.block(index, tokens)

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, P, k*P] -> k tokens [B, k, width] through the frozen patch embedding, without position
        embedding (VPT's ``prepend-pixel`` prompts)."""
        raise VlpromptError(
            f"The {type(self).__name__} adapter does not expose its patch embedding, so pixel prompts "
            "(prepend-pixel) cannot enter it."
        )

    def embed_any_size(self, images: torch.Tensor) -> torch.Tensor:
        """``embed`` for images of another size than the tower's (VPT ``pad`` enlarges them by the frame)."""
        raise VlpromptError(
            f"The {type(self).__name__} adapter embeds only images of its own size, so 'pad' prompts (a pixel "
            "frame that enlarges the image) cannot enter it."
        )

    def input_stem(self) -> InputStem:
        """The first convolution on the pixels (and the norm the official ``below`` retrains with it)."""
        raise VlpromptError(
            f"The {type(self).__name__} adapter does not expose its input convolution, so 'below' prompts (extra "
            "input channels) cannot enter it."
        )

    def embed_after_stem(self, features: torch.Tensor) -> torch.Tensor:
        """``embed`` from the output of ``input_stem`` (conv, and its norm when it has one) on."""
        raise VlpromptError(f"The {type(self).__name__} adapter does not expose the rest of its embedding.")

    def mean_readout(self, tokens: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
        """Features from the mean of final tokens ``start:stop`` (after the tower's per-token final norm, then its
        pooled norm): VPT's img_pool / prompt_pool / imgprompt_pool readouts."""
        raise VlpromptError(
            f"The {type(self).__name__} adapter does not expose its final norms, so VPT's pooled readouts "
            "(img_pool, prompt_pool, imgprompt_pool) cannot be computed; use readout=original."
        )

    def attention_projections(self, index: int) -> AttentionProjections:
        """Block ``index``'s self-attention projections (q, k, v, o), for LoRA."""
        raise no_attention_seam(self)

    def block_sites(self, index: int) -> BlockSites:
        """Block ``index``'s named places (``BLOCK_SITES``) for parameter-efficient modules."""
        raise no_block_sites(self)

    def tower_sites(self) -> BlockSites:
        """The tower's places outside its blocks (``TOWER_SITES``), for SSF and CLS-token tuning."""
        raise no_block_sites(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(images)
        for index in range(self.num_blocks):
            tokens = self.block(index, tokens)
        return self.finalize(tokens)


TEXT_POOLINGS = ("eot", "argmax", "last", "first")


class TextTower(nn.Module, abc.ABC):
    """Adapter over a CLIP-style text tower: a transformer over token ids pooled at one position.

    The declared shape below is what prompt code reads (never the library's internals): ``causal`` and ``pooling``
    decide whether the exact fast paths hold (text_encoding.exact_fast_paths); ``start_tokens`` says where the text
    (and so the learned context) begins.
    """

    width: int  # token embedding width
    context_length: int
    feature_dim: int
    supports_deep_prompts: bool = False  # encode_embeddings takes ``deep`` (see the module docstring)
    causal: bool = True  # each position attends only to earlier ones (CLIP); False for SigLIP's bidirectional tower
    pooling: str = "eot"  # the pooled position (TEXT_POOLINGS): end-of-text id, largest id, last slot, first slot
    start_tokens: int = 1  # special tokens before the text: CLIP's SOS (1); SigLIP's T5 tokenizer adds none (0)

    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> token ids [n, context_length] (padded), with the library's own tokenizer."""
        ...

    @abc.abstractmethod
    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [n, L] -> token embeddings [n, L, width] (no position embedding)."""
        ...

    @abc.abstractmethod
    def eot_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Index of the pooled (end-of-text) token of each row: [n]."""
        ...

    @abc.abstractmethod
    def encode_embeddings(self, embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [n, L, width] with the ids they stand for -> text features [n, feature_dim].

        ``encode_embeddings(embed_tokens(ids), ids)`` equals the library's own ``encode_text(ids)``.
        The ids only locate the pooling position; the embeddings may be learned.
        """
        ...

    def attention_projections(self, index: int) -> AttentionProjections:
        """Block ``index``'s self-attention projections (q, k, v, o), for LoRA."""
        raise no_attention_seam(self)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.encode_embeddings(self.embed_tokens(token_ids), token_ids)


@dataclass
class Backbone:
    """A loaded backbone: an image tower, an optional text tower (CLIP) and how to preprocess images."""

    backbone_id: str
    visual: VisionTower
    preprocess: PreprocessConfig
    text: TextTower | None = None
    logit_scale: float = 100.0  # exp(logit_scale) of a CLIP model, already exponentiated
    # the model's logit bias b (SigLIP: logits = s·cos + b; 0 for CLIP). Softmax-based losses and teachers (CE,
    # ProGrad's KL, zero-shot argmax) are invariant to it; per-class sigmoid probabilities and the SigLIP loss are not
    logit_bias: float = 0.0
    kind: str = "vit"  # "vit" (supervised), "mae" (self-supervised), "clip", "swin" or "convnet"
    extra: dict = field(default_factory=dict)

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.visual, self.text) if m is not None]

    def freeze(self) -> Backbone:
        """Frozen and in eval mode: no dropout or drop-path inside the backbone while prompts train."""
        for module in self.modules():
            module.eval()
            module.requires_grad_(False)
        return self

    def to(self, device: torch.device | str) -> Backbone:
        for module in self.modules():
            module.to(device)
        return self

    def weights_hash(self) -> str:
        """Short content hash of the weights; part of every feature-cache key."""
        cached = self.extra.get("_weights_hash")
        if cached is None:
            digest = hashlib.sha256()
            for module in self.modules():
                for name, tensor in sorted(module.state_dict().items()):
                    digest.update(name.encode())
                    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            cached = self.extra["_weights_hash"] = digest.hexdigest()[:16]
        return cached
