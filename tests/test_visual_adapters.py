"""VPT / SPT on every image tower the adapters expose, and the prompt-only checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
from optional_extras import hf_param  # pytest puts tests/ on sys.path
from test_visual import tiny_backbone  # pytest puts tests/ on sys.path

import vlprompt.methods.spt
import vlprompt.methods.vpt  # noqa: F401
from vlprompt.artifacts.checkpoint import load_prompts, save_prompts
from vlprompt.core.errors import CheckpointError
from vlprompt.data.base import ImageDataset, LabelSpace
from vlprompt.methods.base import create_method
from vlprompt.prompts.visual import VisualPrompts, prompted_forward

tiny = pytest.importorskip("vlprompt.backbones.tiny")
LABELS = LabelSpace(["a", "b"])
FACTORIES = {
    "timm-vit": lambda: tiny.tiny_timm_vit("vit"),
    "timm-mae": lambda: tiny.tiny_timm_vit("mae"),
    "open_clip": tiny.tiny_open_clip,
    "open_clip-custom-text": tiny.tiny_open_clip_custom_text,
    "hf-clip": tiny.tiny_hf_clip,
}


def _images(backbone, n=2):
    size = backbone.preprocess.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("factory", [hf_param(f) if f == "hf-clip" else f for f in FACTORIES])
def test_visual_prompts_on_every_adapter(factory):
    backbone = FACTORIES[factory]()
    visual = backbone.visual
    images = _images(backbone)
    for depth in (1, visual.num_blocks):
        empty = VisualPrompts(0, visual.width, depth=depth, patch_size=visual.patch_size)
        with torch.no_grad():
            torch.testing.assert_close(
                prompted_forward(visual, empty, images), visual(images), rtol=1e-5, atol=1e-5
            )
    for name in ("vpt-shallow", "vpt-deep"):
        method = create_method(name, backbone, LABELS, num_tokens=3).train()
        out = method({"image": images, "label": torch.tensor([0, 1])})
        out["loss"].backward()
        assert method.prompts.tokens.grad.abs().sum() > 0
        assert not visual.training and all(p.grad is None for p in visual.parameters())
    spt = create_method("spt-deep", backbone, LABELS, num_tokens=3, init_batch_size=2, token_budget=500)
    dataset = ImageDataset([0, 1, 2, 3], [0, 1, 0, 1], load=lambda i: _images(backbone, 4)[i])
    report = spt.initialize_prompts(dataset, seed=0)
    assert spt.prompts.tokens.shape == (visual.num_blocks, 3, visual.width) and report.tokens_kept <= 500


def test_prompt_checkpoint_round_trip_and_width_refusal(tmp_path):
    backbone = tiny_backbone()
    method = create_method("vpt-deep", backbone, LABELS, num_tokens=3)
    with torch.no_grad():
        method.prompts.tokens.add_(1.0)
    save_prompts(method, tmp_path)
    saved = set(method.trainable_state_dict())
    assert saved == {"prompts.tokens", "head.weight", "head.bias"}  # no backbone weight is written
    fresh = create_method("vpt-deep", tiny_backbone(), LABELS, num_tokens=3)
    load_prompts(fresh, tmp_path)
    assert torch.equal(fresh.prompts.tokens, method.prompts.tokens)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(
        fresh.eval()({"image": images})["logits"], method.eval()({"image": images})["logits"]
    )
    wider = create_method(
        "vpt-deep", tiny_backbone(width=48), LABELS, num_tokens=3
    )  # same backbone id, width 48
    with pytest.raises(CheckpointError, match="backbone width"):
        load_prompts(wider, tmp_path)
