"""Adapters equal the libraries' own forwards; the text fast paths equal the plain path."""

from __future__ import annotations

import functools

import pytest
import torch
from optional_extras import HAS_TRANSFORMERS, hf_param, needs_transformers  # pytest puts tests/ on sys.path

from vlprompt.backbones import tiny
from vlprompt.backbones.causal_text import CausalTextTower

TEXTS = ["a photo of a dog.", "a red circle on a sketch background", "x", "a small blue square, drawn in ink"]
ATOL = 1e-5


def _images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(
        n, 3, tiny.TINY_IMAGE_SIZE, tiny.TINY_IMAGE_SIZE, generator=torch.Generator().manual_seed(seed)
    )


def _pipeline(visual, images: torch.Tensor) -> torch.Tensor:
    tokens = visual.embed(images)
    for index in range(visual.num_blocks):
        tokens = visual.block(index, tokens)
    return visual.finalize(tokens)


def _timm_reference(model, images):
    return model.forward_head(model.forward_features(images), pre_logits=True)


# ----- image towers -----
@pytest.mark.parametrize(
    "kind,overrides",
    [
        ("vit", {}),
        ("mae", {}),
        ("vit", {"reg_tokens": 2, "no_embed_class": True}),
        ("vit", {"class_token": False, "global_pool": "avg"}),
        ("vit", {"dynamic_img_size": True}),
    ],
)
def test_timm_pipeline_equals_timm_forward(kind, overrides):
    backbone = tiny.tiny_timm_vit(kind, seed=0, **overrides)
    visual = backbone.visual
    images = _images()
    with torch.no_grad():
        expected = _timm_reference(backbone.extra["model"], images)
        torch.testing.assert_close(_pipeline(visual, images), expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(visual(images), expected, atol=ATOL, rtol=0)
    assert visual.pooling == ("mean" if kind == "mae" or overrides.get("global_pool") == "avg" else "cls")
    assert visual.num_prefix_tokens == int(overrides.get("class_token", True)) + overrides.get(
        "reg_tokens", 0
    )
    assert backbone.preprocess.image_size == tiny.TINY_IMAGE_SIZE
    assert backbone.kind == kind


def test_timm_mean_pool_prompts_included_or_not(tiny_timm_mae):
    visual = tiny_timm_mae.visual
    with torch.no_grad():
        tokens = visual.embed(_images(2))
        prompts = torch.randn(2, 3, visual.width)
        tokens = torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], dim=1)
        for index in range(visual.num_blocks):
            tokens = visual.block(index, tokens)
        normed = visual.model.norm(tokens)
        fc_norm = visual.model.fc_norm
        torch.testing.assert_close(
            visual.finalize(tokens, 3, pool_prompts=True), fc_norm(normed[:, 1:].mean(1))
        )
        torch.testing.assert_close(
            visual.finalize(tokens, 3, pool_prompts=False), fc_norm(normed[:, 4:].mean(1))
        )


def test_timm_cls_pool_ignores_prompts(tiny_timm_vit):
    visual = tiny_timm_vit.visual
    tokens = torch.randn(2, 1 + 2 + 16, visual.width)
    torch.testing.assert_close(visual.finalize(tokens, 2), visual.finalize(tokens, 2, pool_prompts=True))
    assert visual.feature_dim == visual.finalize(tokens, 2).shape[-1]


@pytest.mark.parametrize("builder", [tiny.tiny_open_clip, tiny.tiny_open_clip_custom_text])
def test_open_clip_image_pipeline_equals_encode_image(builder):
    backbone = builder(seed=0)
    images = _images()
    with torch.no_grad():
        expected = backbone.extra["model"].encode_image(images)
        torch.testing.assert_close(_pipeline(backbone.visual, images), expected, atol=ATOL, rtol=0)
    assert backbone.kind == "clip"
    assert backbone.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)


def test_hf_image_pipeline_equals_get_image_features(tiny_hf_clip):
    visual = tiny_hf_clip.visual
    images = _images()
    with torch.no_grad():
        expected = visual.visual_projection(visual.vision_model(pixel_values=images).pooler_output)
        torch.testing.assert_close(_pipeline(visual, images), expected, atol=ATOL, rtol=0)


def test_hf_image_matches_get_image_features(tiny_hf_clip):
    images = _images()
    with torch.no_grad():
        expected = _features(tiny_hf_clip.extra["model"].get_image_features(pixel_values=images))
        torch.testing.assert_close(tiny_hf_clip.visual(images), expected, atol=ATOL, rtol=0)


def _features(output):
    """transformers 5 returns a model output with pooler_output; 4.x returns the tensor."""
    return getattr(output, "pooler_output", output)


# ----- text towers: plain path -----
@functools.lru_cache(maxsize=1)
def _open_clip_models():
    """(name, frozen backbone) for every open_clip text layout and pooling variant."""
    cases = [("clip", tiny.tiny_open_clip(seed=0).freeze())]
    for name, options in [
        ("custom_argmax", {}),
        ("custom_eos", {"pool_type": "eos", "eos_id": 49407}),
        ("custom_first", {"pool_type": "first"}),
        ("custom_last", {"pool_type": "last"}),
        ("custom_cls_emb", {"embed_cls": True}),
        ("custom_no_causal", {"no_causal_mask": True}),
        ("custom_blocks", {"qk_norm": True}),
    ]:
        cases.append((name, tiny.tiny_open_clip_custom_text(seed=0, **options).freeze()))
    return cases


@pytest.mark.parametrize("case", range(8))
def test_open_clip_text_equals_encode_text(case):
    name, backbone = _open_clip_models()[case]
    text = backbone.text
    ids = text.tokenize(TEXTS)
    assert ids.shape == (len(TEXTS), text.context_length)
    with torch.no_grad():
        expected = backbone.extra["model"].encode_text(ids)
        torch.testing.assert_close(text(ids), expected, atol=ATOL, rtol=0, msg=name)
        plain = text.encode_embeddings(text.embed_tokens(ids), ids, truncate=False)
        torch.testing.assert_close(plain, expected, atol=ATOL, rtol=0, msg=name)


@needs_transformers
@pytest.mark.parametrize("eos_token_id", [49407, 2])
def test_hf_text_equals_get_text_features(eos_token_id):
    backbone = tiny.tiny_hf_clip(seed=0, eos_token_id=eos_token_id)
    text = backbone.text
    ids = text.tokenize(TEXTS)
    with torch.no_grad():
        expected = _features(backbone.extra["model"].get_text_features(input_ids=ids))
        torch.testing.assert_close(text(ids), expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(text.encode_full(text.embed_tokens(ids), ids), expected, atol=ATOL, rtol=0)


@needs_transformers
def test_hf_tokenizer_matches_open_clip_ids():
    simple = tiny.open_clip_tokenizer()
    hf_ids = tiny.hf_clip_tokenizer()(TEXTS, padding="max_length", max_length=77, return_tensors="pt")[
        "input_ids"
    ]
    oc_ids = simple(TEXTS, context_length=77)
    for row_hf, row_oc in zip(hf_ids, oc_ids):
        length = int(row_oc.argmax()) + 1
        assert row_hf[:length].tolist() == row_oc[:length].tolist()


# ----- text towers: fast paths -----
@functools.lru_cache(maxsize=1)
def _fast_text_towers():
    """Built once per session and frozen: the tests only read them."""
    return [
        ("open_clip", tiny.tiny_open_clip(seed=0).freeze().text),
        ("custom_text", tiny.tiny_open_clip_custom_text(seed=0).freeze().text),
        ("custom_eos", tiny.tiny_open_clip_custom_text(seed=0, pool_type="eos", eos_id=49407).freeze().text),
        ("custom_blocks", tiny.tiny_open_clip_custom_text(seed=0, qk_norm=True).freeze().text),
        ("custom_cls_emb", tiny.tiny_open_clip_custom_text(seed=0, embed_cls=True).freeze().text),
        *([("hf", tiny.tiny_hf_clip(seed=0).freeze().text),
           ("hf_legacy_eos", tiny.tiny_hf_clip(seed=0, eos_token_id=2).freeze().text)] if HAS_TRANSFORMERS else []),
    ]


# the cases of _fast_text_towers; the last two are transformers' (skipped without the [hf] extra)
FAST_CASES = [*range(5), hf_param(5), hf_param(6)]


@pytest.mark.parametrize("case", FAST_CASES)
def test_truncated_path_equals_plain_path(case):
    name, text = _fast_text_towers()[case]
    assert isinstance(text, CausalTextTower)
    ids = text.tokenize(TEXTS)
    embeddings = text.embed_tokens(ids) + 0.01 * torch.randn(ids.shape[0], ids.shape[1], text.width)
    with torch.no_grad():
        plain = text.encode_embeddings(embeddings, ids, truncate=False)
        torch.testing.assert_close(
            text.encode_embeddings(embeddings, ids, truncate=True), plain, atol=ATOL, rtol=0, msg=name
        )


@pytest.mark.parametrize("case", FAST_CASES)
def test_shared_prefix_path_equals_plain_path(case):
    name, text = _fast_text_towers()[case]
    classnames = ["dog", "red circle", "small blue square with stripes", "x"]
    ids = text.tokenize([f"X X X X {c}." for c in classnames])
    prefix_length = 5  # [SOS, 4 context slots]
    context = torch.randn(prefix_length - 1, text.width, requires_grad=True)
    sos = text.embed_tokens(ids[:1, :1])[0]
    prefix = torch.cat([sos, context], dim=0)
    suffix = text.embed_tokens(ids[:, prefix_length:])
    full = torch.cat([prefix.unsqueeze(0).expand(len(classnames), -1, -1), suffix], dim=1)

    plain = text.encode_embeddings(full, ids, truncate=False)
    (grad_plain,) = torch.autograd.grad(plain.square().sum(), context)
    shared = text.encode_shared_prefix(prefix, suffix, ids)
    (grad_shared,) = torch.autograd.grad(shared.square().sum(), context)
    torch.testing.assert_close(shared, plain, atol=ATOL, rtol=0, msg=name)
    torch.testing.assert_close(grad_shared, grad_plain, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("case", FAST_CASES)
def test_grouped_prefixes_equal_plain_path(case):
    """m prefixes x n suffixes (CoCoOp: one context per image): [m, n, D] equal to the m*n plain rows."""
    name, text = _fast_text_towers()[case]
    classnames = ["dog", "red circle", "small blue square with stripes"]
    ids = text.tokenize([f"X X X {c}." for c in classnames])
    groups, prefix_length = 2, 4
    context = torch.randn(groups, prefix_length - 1, text.width, requires_grad=True)
    sos = text.embed_tokens(ids[:1, :1])[0]
    prefixes = torch.cat([sos.unsqueeze(0).expand(groups, -1, -1), context], dim=1)
    suffix = text.embed_tokens(ids[:, prefix_length:])

    shared = text.encode_shared_prefix(prefixes, suffix, ids)
    assert shared.shape == (groups, len(classnames), text.feature_dim)
    (grad_shared,) = torch.autograd.grad(shared.square().sum(), context)
    plain = torch.stack(
        [
            text.encode_embeddings(
                torch.cat([prefixes[g].unsqueeze(0).expand(len(classnames), -1, -1), suffix], dim=1),
                ids,
                truncate=False,
            )
            for g in range(groups)
        ]
    )
    (grad_plain,) = torch.autograd.grad(plain.square().sum(), context)
    torch.testing.assert_close(shared, plain, atol=ATOL, rtol=0, msg=name)
    torch.testing.assert_close(grad_shared, grad_plain, atol=1e-4, rtol=1e-4, msg=name)


def test_shared_prefix_with_eot_inside_prefix_falls_back():
    text = tiny.tiny_open_clip(seed=0).text
    ids = text.tokenize(["a", "a photo of a dog"])
    embeddings = text.embed_tokens(ids)
    prefix_length = 4  # row 0 ends at position 2, inside the prefix
    with torch.no_grad():
        shared = text.encode_shared_prefix(embeddings[0, :prefix_length], embeddings[:, prefix_length:], ids)
        full = torch.cat(
            [embeddings[0, :prefix_length].expand(2, -1, -1), embeddings[:, prefix_length:]], dim=1
        )
        torch.testing.assert_close(
            shared, text.encode_embeddings(full, ids, truncate=False), atol=ATOL, rtol=0
        )


def test_eot_positions(tiny_clip):
    text = tiny_clip.text
    ids = text.tokenize(["a photo of a dog", "x"])
    assert text.eot_positions(ids).tolist() == [6, 2]


# ----- determinism and the Backbone contract -----
def test_tiny_builders_are_deterministic_and_keep_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = tiny.tiny_open_clip(seed=3)
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert first.weights_hash() == tiny.tiny_open_clip(seed=3).weights_hash()
    assert first.weights_hash() != tiny.tiny_open_clip(seed=4).weights_hash()


def test_backbone_freeze_and_feature_dims(tiny_clip):
    backbone = tiny_clip.freeze()
    assert not any(p.requires_grad for m in backbone.modules() for p in m.parameters())
    images = _images(2)
    with torch.no_grad():
        image_features = backbone.visual(images)
        text_features = backbone.text(backbone.text.tokenize(["a", "b c"]))
    assert image_features.shape == (2, backbone.visual.feature_dim)
    assert text_features.shape == (2, backbone.text.feature_dim)
    assert backbone.visual.feature_dim == backbone.text.feature_dim
    assert backbone.preprocess.image_size == tiny.TINY_IMAGE_SIZE


def test_timm_refuses_readouts_it_cannot_split():
    import timm

    from vlprompt.backbones.timm_vit import wrap_timm_vit
    from vlprompt.core.errors import VlpromptError

    small = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    # an attention-pooling (MAP) head is read out by the adapter now (tests/test_clip_families.py)
    assert wrap_timm_vit(timm.create_model("vit_tiny_patch16_224", global_pool="map", **small), "map").visual.pooling == "map"
    with pytest.raises(VlpromptError, match="distilled"):
        wrap_timm_vit(timm.create_model("deit_tiny_distilled_patch16_224", **small), "deit")
    with pytest.raises(VlpromptError, match="not a VisionTransformer"):
        wrap_timm_vit(timm.create_model("resnet18"), "resnet")


def test_open_clip_refuses_attentional_pool():
    import open_clip

    from vlprompt.backbones.open_clip import OpenClipVisionTower
    from vlprompt.core.errors import VlpromptError

    visual = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={
            "image_size": 32,
            "patch_size": 8,
            "width": 32,
            "layers": 1,
            "head_width": 16,
            "attentional_pool": True,
            "attn_pooler_queries": 4,
            "attn_pooler_heads": 2,
        },
        text_cfg={"width": 32, "heads": 2, "layers": 1, "vocab_size": 100, "context_length": 8},
    ).visual
    with pytest.raises(VlpromptError, match="attentional pooler"):
        OpenClipVisionTower(visual)
