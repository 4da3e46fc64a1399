"""Tiny random-init backbones of the real architectures, built offline, for tests and quick checks.

They are the libraries' own classes (timm VisionTransformer, open_clip CLIP / CustomTextCLIP, transformers
CLIPModel) at 32x32 images and widths of 32-64, so tests exercise exactly the adapter code a real checkpoint
runs through. Every builder is deterministic from ``seed`` and leaves the global RNG untouched.

The HF CLIP tokenizer is a genuine ``transformers.CLIPTokenizer`` whose vocabulary and merges are read from the
BPE file open_clip ships (the same byte-level BPE OpenAI CLIP uses; its ids match open_clip's tokenizer), because
transformers ships no vocabulary files and nothing may be downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch

from vlprompt.backbones.base import Backbone

TINY_IMAGE_SIZE = 32
TINY_CONTEXT_LENGTH = 77
CLIP_VOCAB_SIZE = 49408


def _seeded(seed: int, build: Callable[[], Any]) -> Any:
    """Build under ``seed`` without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@functools.lru_cache(maxsize=1)
def open_clip_tokenizer() -> Any:
    """open_clip's SimpleTokenizer (BPE file shipped inside the open_clip package)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


@functools.lru_cache(maxsize=1)
def hf_clip_tokenizer() -> Any:
    """A transformers CLIPTokenizer built from open_clip's shipped BPE vocabulary and merges."""
    from vlprompt.backbones.hf_clip import require_transformers

    require_transformers("The tiny transformers CLIP's tokenizer")
    from transformers import CLIPTokenizer

    simple = open_clip_tokenizer()
    vocab = dict(simple.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = [pair for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges)


def tiny_timm_vit(kind: str = "vit", seed: int = 0, **overrides: Any) -> Backbone:
    """timm ViT: 32 px, patch 8, width 32, 2 blocks. ``kind="mae"`` uses mean pooling (timm global_pool='avg')."""
    import timm

    from vlprompt.backbones.timm_vit import wrap_timm_vit

    options = {
        "pretrained": False,
        "num_classes": 0,
        "img_size": TINY_IMAGE_SIZE,
        "patch_size": 8,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "mlp_ratio": 2.0,
        "global_pool": "avg" if kind == "mae" else "token",
    }
    options.update(overrides)
    model = _seeded(seed, lambda: timm.create_model("vit_tiny_patch16_224", **options)).eval()
    return wrap_timm_vit(model, backbone_id=f"tiny:timm_vit_{kind}@seed{seed}", kind=kind)


def _tiny_clip_cfgs(text_overrides: dict) -> tuple[dict, dict]:
    vision = {"image_size": TINY_IMAGE_SIZE, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32, "mlp_ratio": 2.0}
    text = {
        "context_length": TINY_CONTEXT_LENGTH,
        "vocab_size": CLIP_VOCAB_SIZE,
        "width": 32,
        "heads": 2,
        "layers": 2,
        "mlp_ratio": 2.0,
    }
    text.update(text_overrides)
    return vision, text


def tiny_open_clip(seed: int = 0) -> Backbone:
    """open_clip ``CLIP`` (text parts on the model): embed 32, vision width 64, text width 32, 2+2 layers."""
    import open_clip

    from vlprompt.backbones.open_clip import open_clip_preprocess, wrap_open_clip

    vision, text = _tiny_clip_cfgs({})
    model = _seeded(seed, lambda: open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)).eval()
    return wrap_open_clip(
        model, open_clip_tokenizer(), open_clip_preprocess(model), f"tiny:open_clip@seed{seed}"
    )


def tiny_open_clip_custom_text(seed: int = 0, **text_overrides: Any) -> Backbone:
    """open_clip ``CustomTextCLIP`` (text parts in ``model.text``); text options (pool_type, embed_cls...) overridable."""
    import open_clip

    from vlprompt.backbones.open_clip import open_clip_preprocess, wrap_open_clip

    vision, text = _tiny_clip_cfgs(text_overrides)
    model = _seeded(
        seed, lambda: open_clip.CustomTextCLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)
    ).eval()
    return wrap_open_clip(
        model, open_clip_tokenizer(), open_clip_preprocess(model), f"tiny:open_clip_custom_text@seed{seed}"
    )


def tiny_hf_clip(seed: int = 0, eos_token_id: int = 49407) -> Backbone:
    """transformers ``CLIPModel``: vision width 64, text width 32, 2+2 layers, projection 32.

    ``eos_token_id=2`` reproduces legacy configs (pooling at the largest id).
    """
    from vlprompt.backbones.hf_clip import require_transformers, wrap_hf_clip

    require_transformers("The tiny transformers CLIP (tiny:hf_clip)")
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={
            "vocab_size": CLIP_VOCAB_SIZE,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": TINY_CONTEXT_LENGTH,
            "bos_token_id": 49406,
            "eos_token_id": eos_token_id,
            "pad_token_id": 49407,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    model = _seeded(seed, lambda: CLIPModel(config)).eval()
    return wrap_hf_clip(model, hf_clip_tokenizer(), f"tiny:hf_clip@seed{seed}")


def vit_b16_shaped(seed: int = 0) -> Backbone:
    """A random-init timm ViT-B/16 at 224 px, for speed and memory benchmarks (not for accuracy)."""
    import timm

    from vlprompt.backbones.timm_vit import wrap_timm_vit

    model = _seeded(
        seed, lambda: timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    ).eval()
    return wrap_timm_vit(model, backbone_id=f"random:timm:vit_base_patch16_224@seed{seed}")


def clip_b16_shaped(seed: int = 0) -> Backbone:
    """A random-init open_clip ViT-B-16 (pretrained=None), for speed and memory benchmarks."""
    import open_clip

    from vlprompt.backbones.open_clip import open_clip_preprocess, wrap_open_clip

    model = _seeded(seed, lambda: open_clip.create_model("ViT-B-16", pretrained=None)).eval()
    return wrap_open_clip(
        model,
        open_clip.get_tokenizer("ViT-B-16"),
        open_clip_preprocess(model),
        f"random:open_clip:ViT-B-16@seed{seed}",
    )


# ----- open_clip towers beyond OpenAI CLIP (EVA-CLIP, SigLIP, SigLIP 2) and timm MAP / EVA ViTs -----
TINY_SIGLIP_CONTEXT_LENGTH = 64  # SigLIP's trained text length
_SENTENCEPIECE_WORDS = (
    "a", "an", "the", "of", "photo", "picture", "drawing", "sketch", "red", "green", "blue", "circle", "square",
    "triangle", "x", "cat", "dog", "itap", "art",
)


def tiny_sentencepiece_folder(style: str) -> str:
    """A tiny SentencePiece-style (Unigram, "▁" word boundaries) HF tokenizer written to a temp folder, offline.

    ``style="t5"`` is SigLIP's layout (no start token, ``</s>`` appended, ``<pad>`` = 0); ``"gemma"`` is Gemma's HF
    default as SigLIP 2 ships it (``<bos>`` first, no end token, ``<pad>`` = 0). Every lowercase word tokenises
    (single letters are in the vocabulary), so any class name works. Built with the ``tokenizers`` library from a
    hand-written vocabulary, never downloaded; the folder loads with transformers' AutoTokenizer like a hub copy.
    """
    return _sentencepiece_folder(style)


@functools.lru_cache(maxsize=2)
def _sentencepiece_folder(style: str) -> str:
    import string
    import tempfile

    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    if style not in ("t5", "gemma"):
        raise ValueError(f"tiny tokenizer style must be 't5' or 'gemma', got {style!r}")
    specials = ["<pad>", "</s>", "<unk>"] if style == "t5" else ["<pad>", "<eos>", "<bos>", "<unk>"]
    pieces = [(token, 0.0) for token in specials] + [("▁", -2.0)]
    pieces += [("▁" + word, -3.0) for word in _SENTENCEPIECE_WORDS]
    pieces += [(c, -6.0) for c in string.ascii_lowercase + string.digits + ".,'-"]
    pieces += [("▁" + c, -7.0) for c in string.ascii_lowercase + string.digits]
    tokenizer = Tokenizer(Unigram(pieces, unk_id=specials.index("<unk>")))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    if style == "t5":
        tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        names = {"eos_token": "</s>"}
    else:
        tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
        names = {"eos_token": "<eos>", "bos_token": "<bos>"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", **names)
    folder = tempfile.mkdtemp(prefix=f"vlprompt-tiny-{style}-tokenizer-")
    fast.save_pretrained(folder)
    return folder


def tiny_sentencepiece_tokenizer(style: str) -> Any:
    """open_clip's ``HFTokenizer`` over ``tiny_sentencepiece_folder(style)`` (SigLIP's cleaning, 64 tokens)."""
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(
        tiny_sentencepiece_folder(style), context_length=TINY_SIGLIP_CONTEXT_LENGTH, clean="canonicalize"
    )


def _open_clip_timm_tower(trunk: Any) -> Any:
    """open_clip's own ``TimmModel`` around a tiny timm trunk.

    TimmModel's constructor passes no size options to timm (it would build the full-size trunk), so the tiny tower
    is assembled from the same parts it would hold: ``trunk`` built with the options TimmModel passes
    (``num_classes`` = the projection width or 0, ``global_pool``) plus tiny sizes, and an empty ``head`` (open_clip's
    ``timm_proj`` null / "none" configs, which EVA02-B-16 and the SigLIP configs are).
    """
    from open_clip.timm_model import TimmModel
    from torch import nn

    tower = TimmModel.__new__(TimmModel)
    nn.Module.__init__(tower)
    tower.image_size = (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    tower.trunk = trunk
    tower.head = nn.Sequential()
    return tower


def _tiny_eva_trunk(num_classes: int) -> Any:
    import timm

    return timm.create_model(
        "eva02_base_patch16_clip_224", pretrained=False, img_size=TINY_IMAGE_SIZE, patch_size=8, embed_dim=32,
        depth=2, num_heads=2, ref_feat_shape=(4, 4), num_classes=num_classes, global_pool="token",
    )


def _tiny_siglip_trunk() -> Any:
    import timm

    return timm.create_model(
        "vit_base_patch16_siglip_224", pretrained=False, img_size=TINY_IMAGE_SIZE, patch_size=8, embed_dim=32,
        depth=2, num_heads=2, mlp_ratio=2.0, num_classes=0, global_pool="map",
    )


def tiny_open_clip_eva(seed: int = 0) -> Backbone:
    """open_clip EVA02-B-16 shrunk: a timm Eva trunk (rope, SwiGLU, fused head as projection) + causal text."""
    import open_clip

    from vlprompt.backbones.open_clip import open_clip_preprocess, wrap_open_clip

    def build() -> Any:
        vision, text = _tiny_clip_cfgs({})
        model = open_clip.CustomTextCLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)
        model.visual = _open_clip_timm_tower(_tiny_eva_trunk(num_classes=32))
        return model.eval()

    model = _seeded(seed, build)
    return wrap_open_clip(model, open_clip_tokenizer(), open_clip_preprocess(model), f"tiny:open_clip_eva@seed{seed}")


def tiny_open_clip_siglip(seed: int = 0, version: int = 1) -> Backbone:
    """open_clip ViT-B-16-SigLIP (``version=1``) / -SigLIP2 (2) shrunk: timm MAP ViT + bidirectional text tower
    pooled at the last slot, context 64, logit bias -10, its own SentencePiece-style tokenizer."""
    import open_clip

    from vlprompt.backbones.open_clip import open_clip_preprocess, wrap_open_clip

    style = "t5" if version == 1 else "gemma"
    vocab = len(tiny_sentencepiece_tokenizer(style).tokenizer)
    text = {
        "context_length": TINY_SIGLIP_CONTEXT_LENGTH, "vocab_size": vocab, "width": 32, "heads": 2, "layers": 2,
        "mlp_ratio": 2.0, "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
    }
    if version == 2:
        text["act_kwargs"] = {"approximate": "tanh"}

    def build() -> Any:
        vision, _ = _tiny_clip_cfgs({})
        model = open_clip.CustomTextCLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, init_logit_bias=-10.0)
        model.visual = _open_clip_timm_tower(_tiny_siglip_trunk())
        return model.eval()

    model = _seeded(seed, build)
    return wrap_open_clip(
        model, tiny_sentencepiece_tokenizer(style), open_clip_preprocess(model),
        f"tiny:open_clip_siglip{'' if version == 1 else '2'}@seed{seed}",
    )


def tiny_timm_eva(seed: int = 0) -> Backbone:
    """timm ``Eva`` (EVA-02 CLIP layout) alone, as ``timm:eva02_*`` loads it: 32 px, patch 8, width 32."""
    from vlprompt.backbones.timm_vit import wrap_timm_vit

    model = _seeded(seed, lambda: _tiny_eva_trunk(num_classes=0)).eval()
    return wrap_timm_vit(model, backbone_id=f"tiny:timm_eva@seed{seed}")


def tiny_timm_siglip(seed: int = 0) -> Backbone:
    """timm SigLIP ViT with its MAP head, as ``timm:vit_base_patch16_siglip_224`` loads it (tiny sizes)."""
    from vlprompt.backbones.timm_vit import wrap_timm_vit

    model = _seeded(seed, _tiny_siglip_trunk).eval()
    return wrap_timm_vit(model, backbone_id=f"tiny:timm_siglip@seed{seed}")
def tiny_timm_swin(seed: int = 0, **overrides: Any) -> Backbone:
    """timm SwinTransformer: 32 px, patch 2, window 4, widths 16/32/64, depths 2/2/2 (16x16, 8x8, 4x4 grids, so
    stages 0 and 1 have several windows and shifted blocks, stage 2 one window)."""
    import timm

    from vlprompt.backbones.swin import wrap_timm_swin

    options = {
        "pretrained": False,
        "num_classes": 0,
        "img_size": TINY_IMAGE_SIZE,
        "patch_size": 2,
        "window_size": 4,
        "embed_dim": 16,
        "depths": (2, 2, 2),
        "num_heads": (2, 2, 4),
        "mlp_ratio": 2.0,
    }
    options.update(overrides)
    model = _seeded(seed, lambda: timm.create_model("swin_tiny_patch4_window7_224", **options)).eval()
    return wrap_timm_swin(model, backbone_id=f"tiny:timm_swin@seed{seed}")


def tiny_timm_convnet(family: str = "resnet", seed: int = 0, **overrides: Any) -> Backbone:
    """timm ResNet (basic blocks, 1 per stage, widths 8-64) or ConvNeXt (depths 1/1/1/1, widths 8-64), 32 px.
    BatchNorm running statistics are randomised so that eval-mode normalisation is not the identity."""
    import timm

    from vlprompt.backbones.convnet import wrap_timm_convnet

    if family == "resnet":
        def build() -> Any:
            options = {
                "pretrained": False, "num_classes": 0, "layers": (1, 1, 1, 1), "stem_width": 8,
                "channels": (8, 16, 32, 64), "zero_init_last": False,
            }
            options.update(overrides)
            model = timm.create_model("resnet18", **options)
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
            return model
    elif family == "convnext":
        def build() -> Any:
            options = {"pretrained": False, "num_classes": 0, "depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)}
            options.update(overrides)
            return timm.create_model("convnext_atto", **options)
    else:
        raise ValueError(f"tiny_timm_convnet family must be 'resnet' or 'convnext', got {family!r}")
    model = _seeded(seed, build).eval()
    backbone = wrap_timm_convnet(model, backbone_id=f"tiny:timm_{family}@seed{seed}")
    backbone.preprocess = dataclasses.replace(backbone.preprocess, image_size=TINY_IMAGE_SIZE)
    return backbone
