"""ResNet / ConvNeXt: the adapter equals timm's own forward, and VPT ``pad`` equals the official pixel frame.

The reference pads by hand as KMnP/vpt ``models/resnet.py`` (``_setup_prompt_pad`` / ``incorporate_prompt``) does:
a top/bottom strip [3, 2p, S + 2p] and a left/right strip [3, S, 2p], normalised with ImageNet's mean and std, the
left p columns and top p rows from the first halves; the frozen network then runs on the (S + 2p)^2 image.
"""

from __future__ import annotations

import pytest
import torch

import vlprompt.methods.finetune
import vlprompt.methods.spt
import vlprompt.methods.vpt  # noqa: F401
from vlprompt.artifacts.checkpoint import load_prompts, save_prompts
from vlprompt.backbones.registry import create_backbone
from vlprompt.backbones.tiny import tiny_timm_convnet
from vlprompt.core.errors import VlpromptError
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import create_method

LABELS = LabelSpace(["a", "b"])
FAMILIES = ("resnet", "convnext")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_convnet_adapter_equals_timm_forward(family):
    backbone = tiny_timm_convnet(family, seed=1)
    model, images = backbone.extra["model"], _images(3)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(images), pre_logits=True)
        torch.testing.assert_close(backbone.visual(images), expected, rtol=0, atol=0)
    assert backbone.visual.num_blocks == 4 and backbone.visual.prompt_support().kind == "pixels"


@pytest.mark.parametrize("family", FAMILIES)
def test_pad_equals_official_pixel_frame(family):
    backbone = tiny_timm_convnet(family, seed=2)
    method = create_method("vpt-shallow", backbone, LABELS, location="pad", num_tokens=3).eval()
    pad, p, size = method.pad, 3, 32
    assert tuple(pad.tb.shape) == (1, 3, 2 * p, size + 2 * p) and tuple(pad.lr.shape) == (1, 3, size, 2 * p)
    # uniform(0, 1) pixels before normalising: all inside [0, 1] and spread over it (684 seeded draws)
    values = pad.tb.detach()
    assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0
    assert float(values.min()) < 0.01 and float(values.max()) > 0.99 and abs(float(values.mean()) - 0.5) < 0.05
    images = _images(2, seed=3)
    lr, tb = (pad.lr.detach() - MEAN) / STD, (pad.tb.detach() - MEAN) / STD
    framed = torch.empty(2, 3, size + 2 * p, size + 2 * p)
    framed[:, :, :p, :] = tb[:, :, :p]
    framed[:, :, p + size :, :] = tb[:, :, p:]
    framed[:, :, p : p + size, :p] = lr[..., :p]
    framed[:, :, p : p + size, p + size :] = lr[..., p:]
    framed[:, :, p : p + size, p : p + size] = images
    model = backbone.extra["model"]
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(framed), pre_logits=True)
        torch.testing.assert_close(method.encode(images), expected, rtol=1e-5, atol=1e-5)


def test_pad_gaussian_initiation_is_not_normalised():
    backbone = tiny_timm_convnet("resnet")
    method = create_method("vpt-shallow", backbone, LABELS, location="pad", num_tokens=2, initiation="gaussian")
    framed = method.pad(torch.zeros(1, 3, 32, 32))
    torch.testing.assert_close(framed[:, :, :2, :], method.pad.tb.detach()[:, :, :2])
    assert float(method.pad.tb.detach().min()) < 0.0  # N(0, 1), not uniform(0, 1)


def test_pad_trains_only_the_frame_and_head_and_round_trips(tmp_path):
    backbone = create_backbone("tiny:timm_convnext")
    method = create_method("vpt-shallow", backbone, LABELS, location="pad", num_tokens=2).train()
    method({"image": _images(), "label": torch.tensor([0, 1])})["loss"].backward()
    assert method.pad.tb.grad.abs().sum() > 0 and method.pad.lr.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.visual.parameters())
    assert set(method.trainable_state_dict()) == {"pad.tb", "pad.lr", "head.weight", "head.bias"}
    path = tmp_path / "prompts"
    save_prompts(method, path)
    fresh = create_method("vpt-shallow", backbone, LABELS, location="pad", num_tokens=2)
    load_prompts(fresh, path)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval().encode(_images()), method.eval().encode(_images()))


@pytest.mark.parametrize("family", FAMILIES)
def test_convnets_refuse_token_prompts_below_and_block_methods(family):
    backbone = tiny_timm_convnet(family)
    with pytest.raises(VlpromptError, match="pixel space only"):
        create_method("vpt-shallow", backbone, LABELS)
    if family == "convnext":
        with pytest.raises(VlpromptError, match="Not support prompt-below"):
            create_method("vpt-shallow", backbone, LABELS, location="below")
    with pytest.raises(VlpromptError, match="deep prompts at location 'pad'"):
        create_method("vpt-deep", backbone, LABELS, location="pad")
    with pytest.raises(VlpromptError, match="transformer blocks"):
        backbone.visual.block_sites(0)


def test_partial_k_on_a_resnet_tunes_its_last_stage():
    backbone = tiny_timm_convnet("resnet")
    method = create_method("partial-k", backbone, LABELS, k=1)
    tuned = {id(p) for p in method.visual.model.layer4.parameters()}  # the method's private copy
    trainable = [p for p in method.trainable_parameters() if id(p) not in {id(q) for q in method.head.parameters()}]
    assert trainable and {id(p) for p in trainable} == tuned
