"""VPT's ablation options on a timm ViT, each compared with the official definition re-derived by hand.

The references follow KMnP/vpt ``vit_prompt/vit_ablations.py`` (``incorporate_prompt``, ``forward_deep_prompt``,
``forward_reverse_deep_prompt``, the VIT_POOL_TYPE readouts) on the tiny model's own modules: timm's patch
embedding + position embedding, its blocks, its final norm.
"""

from __future__ import annotations

import pytest
import torch

import vlprompt.methods.spt
import vlprompt.methods.vpt  # noqa: F401
from vlprompt.backbones.tiny import tiny_timm_vit
from vlprompt.core.errors import ConfigError, VlpromptError
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import create_method

LABELS = LabelSpace(["a", "b"])
P = 3


def _backbone(kind: str = "vit", seed: int = 0):
    return tiny_timm_vit(kind, seed=seed, depth=4)


def _images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _embed(model, images):
    return model.norm_pre(model._pos_embed(model.patch_embed(images)))


def _reference(model, images, before_block):
    """CLS readout of the blocks, ``before_block(i, tokens)`` applied at each block's input."""
    tokens = _embed(model, images)
    for index, block in enumerate(model.blocks):
        tokens = block(before_block(index, tokens))
    return model.norm(tokens)


def _set(method, index):
    return method.prompts.raw(index).detach().unsqueeze(0)


def _check(method, backbone, expected_tokens, pick=lambda t: t[:, 0]):
    with torch.no_grad():
        torch.testing.assert_close(method.eval().encode(_images()), pick(expected_tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["vpt-shallow", "vpt-deep"])
def test_add_adds_one_prompt_per_position(name):
    backbone = _backbone()
    method = create_method(name, backbone, LABELS, location="add").eval()
    model = backbone.extra["model"]
    assert tuple(method.prompts.raw(0).shape) == (17, 32)  # CLS + 16 patches, as the official position table
    deep = name == "vpt-deep"
    with torch.no_grad():
        expected = _reference(
            model, _images(), lambda i, t: t + _set(method, i) if (i == 0 or deep) else t
        )
    _check(method, backbone, expected)


def test_add1_deep_adds_one_prompt_to_every_token():
    backbone = _backbone(seed=1)
    method = create_method("vpt-deep", backbone, LABELS, location="add-1", projection_dim=5).eval()
    model = backbone.extra["model"]
    projection = method.prompts.projection
    assert tuple(method.prompts.tokens.shape) == (4, 1, 5)
    with torch.no_grad():
        expected = _reference(model, _images(), lambda i, t: t + projection(_set(method, i)))
    _check(method, backbone, expected)


def _insert(tokens, prompts):
    return torch.cat([tokens[:, :1], prompts.expand(tokens.shape[0], -1, -1), tokens[:, 1:]], dim=1)


def _replace(tokens, prompts):
    return torch.cat([tokens[:, :1], prompts.expand(tokens.shape[0], -1, -1), tokens[:, 1 + P :]], dim=1)


def test_partial_deep_prompts_the_first_n_blocks():
    backbone = _backbone(seed=2)
    method = create_method("vpt-deep", backbone, LABELS, num_tokens=P, num_deep_layers=2)
    assert method.prompts.depth == 2  # official: the input set + NUM_DEEP_LAYERS - 1 deep sets

    def before(i, t):
        return _insert(t, _set(method, 0)) if i == 0 else _replace(t, _set(method, 1)) if i == 1 else t

    with torch.no_grad():
        expected = _reference(backbone.extra["model"], _images(), before)
    _check(method, backbone, expected)


def test_reversed_partial_deep_overwrites_patches_at_its_first_block_as_the_official():
    backbone = _backbone(seed=3)
    method = create_method("vpt-deep", backbone, LABELS, num_tokens=P, num_deep_layers=2, reverse_deep=True)
    assert method.prompts.depth == 2  # official: NUM_DEEP_LAYERS sets, no input set

    def before(i, t):
        return _replace(t, _set(method, i - 2)) if i >= 2 else t

    with torch.no_grad():
        expected = _reference(backbone.extra["model"], _images(), before)
    _check(method, backbone, expected)


def test_noexpand_removes_the_prompts_after_the_last_prompted_block():
    backbone = _backbone(seed=8)
    method = create_method("vpt-deep", backbone, LABELS, num_tokens=P, num_deep_layers=2, deep_noexpand=True)

    def before(i, t):
        if i == 0:
            return _insert(t, _set(method, 0))
        if i == 1:
            return _replace(t, _set(method, 1))
        return torch.cat([t[:, :1], t[:, 1 + P :]], dim=1) if i == 2 else t

    with torch.no_grad():
        expected = _reference(backbone.extra["model"], _images(), before)
    assert expected.shape[1] == 17  # CLS + 16 patches: back to the unprompted length
    _check(method, backbone, expected)


def test_shared_deep_reuses_the_input_set_at_every_block():
    backbone = _backbone(seed=4)
    method = create_method("vpt-deep", backbone, LABELS, num_tokens=P, deep_shared=True)
    assert method.prompts.depth == 1

    def before(i, t):
        return _insert(t, _set(method, 0)) if i == 0 else _replace(t, _set(method, 0))

    with torch.no_grad():
        expected = _reference(backbone.extra["model"], _images(), before)
    _check(method, backbone, expected)


@pytest.mark.parametrize(
    ("readout", "span"),
    [("img_pool", (1 + P, None)), ("prompt_pool", (1, 1 + P)), ("imgprompt_pool", (1, None))],
)
def test_readouts_pool_the_official_spans(readout, span):
    backbone = _backbone(seed=5)
    method = create_method("vpt-shallow", backbone, LABELS, num_tokens=P, readout=readout)
    with torch.no_grad():
        expected = _reference(
            backbone.extra["model"], _images(), lambda i, t: _insert(t, _set(method, 0)) if i == 0 else t
        )
    _check(method, backbone, expected, pick=lambda t: t[:, span[0] : span[1]].mean(dim=1))


def test_mae_readouts_use_the_fresh_fc_norm():
    """Official vit_mae.py: no final norm; the mean of the chosen tokens through fc_norm."""
    backbone = _backbone("mae", seed=6)
    model = backbone.extra["model"]
    for readout, span in (("original", (1, None)), ("img_pool", (1 + P, None))):
        method = create_method("vpt-shallow", backbone, LABELS, num_tokens=P, readout=readout)
        with torch.no_grad():
            tokens = _embed(model, _images())
            tokens = _insert(tokens, _set(method, 0))
            for block in model.blocks:
                tokens = block(tokens)
            expected = model.fc_norm(tokens[:, span[0] : span[1]].mean(dim=1))
            torch.testing.assert_close(method.eval().encode(_images()), expected, rtol=1e-5, atol=1e-5)


def test_prepend_pixel_embeds_pixel_patches_without_position():
    backbone = _backbone(seed=7)
    method = create_method("vpt-shallow", backbone, LABELS, num_tokens=P, location="prepend-pixel")
    model = backbone.extra["model"]
    pixels = method.pixel_prompts.pixels.detach()
    assert tuple(pixels.shape) == (1, 3, 8, 8 * P)
    with torch.no_grad():
        prompts = model.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        expected = _reference(model, _images(), lambda i, t: _insert(t, prompts) if i == 0 else t)
    _check(method, backbone, expected)
    method.train()({"image": _images(), "label": torch.tensor([0, 1])})["loss"].backward()
    assert method.pixel_prompts.pixels.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.visual.parameters())


def test_only_plain_prompts_share_the_serving_pass():
    backbone = _backbone()
    assert create_method("vpt-deep", backbone, LABELS).shares_token_pass()
    assert not create_method("vpt-deep", backbone, LABELS, num_deep_layers=2).shares_token_pass()
    assert not create_method("vpt-shallow", backbone, LABELS, location="add-1").shares_token_pass()
    assert not create_method("vpt-shallow", backbone, LABELS, readout="img_pool").shares_token_pass()


@pytest.mark.parametrize(
    ("name", "options", "error", "reason"),
    [
        ("vpt-deep", {"location": "pad"}, ConfigError, "deep prompts at location 'pad'"),
        ("vpt-deep", {"location": "below"}, ConfigError, "deep prompts at location 'below'"),
        ("vpt-shallow", {"location": "nowhere"}, ConfigError, "location = .nowhere. is not allowed; choose one of"),
        ("vpt-shallow", {"location": "add", "readout": "img_pool"}, ConfigError, "needs location=prepend"),
        ("vpt-deep", {"reverse_deep": True}, ConfigError, "needs num_deep_layers"),
        ("vpt-deep", {"num_deep_layers": 9}, ConfigError, "exceeds the backbone's 4 blocks"),
        ("vpt-shallow", {"num_deep_layers": 2}, ConfigError, "use the deep method"),
        ("vpt-deep", {"location": "prepend-pixel"}, ConfigError, "deep prompts at location 'prepend-pixel'"),
        ("vpt-shallow", {"location": "pad", "projection_dim": 4}, ConfigError, "token prompts"),
        ("vpt-shallow", {"initiation": "gaussian"}, ConfigError, "pad prompts only"),
        ("spt-deep", {"num_deep_layers": 2}, ConfigError, "VPT ablations"),
        ("vpt-deep", {"num_deep_layers": 2, "deep_noexpand": True, "readout": "img_pool"}, ConfigError,
         "no prompt span"),
        ("vpt-deep", {"deep_noexpand": True, "location": "add"}, ConfigError, "forward partial depth"),
    ],
)
def test_options_that_do_not_apply_are_refused_with_the_reason(name, options, error, reason):
    with pytest.raises(error, match=reason):
        create_method(name, _backbone(), LABELS, **options)


def test_clip_towers_take_token_prompts_but_refuse_pixel_locations():
    from vlprompt.backbones.tiny import tiny_open_clip

    backbone = tiny_open_clip()
    create_method("vpt-deep", backbone, LABELS, location="add-1")
    for location in ("prepend-pixel", "below", "pad"):
        with pytest.raises(VlpromptError, match="patch-embedding seam"):
            create_method("vpt-shallow", backbone, LABELS, location=location)
    with pytest.raises(VlpromptError, match="mean-readout seam"):
        create_method("vpt-shallow", backbone, LABELS, readout="img_pool")
