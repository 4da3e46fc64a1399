"""Per-method defaults that follow each official code: class-name cleaning (CLAP keeps underscores) and the
fixed logit scale of 100 in the CLIP-LoRA and Tip-Adapter presets."""
from __future__ import annotations

import pytest
import torch

from vlprompt.backbones.tiny import tiny_open_clip
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import LabelSpace
from vlprompt.methods import import_all
from vlprompt.methods.base import create_method
from vlprompt.presets import load_preset
from vlprompt.prompts.text import encode_texts

NAMES = ["apple_pie", "red_velvet_cake", "sushi"]


@pytest.fixture(scope="module")
def clip():
    import_all()
    return tiny_open_clip(seed=0)


def test_label_space_keeps_the_names_as_given_and_cleans_per_request():
    space = LabelSpace(NAMES)
    assert space.classnames == ["apple pie", "red velvet cake", "sushi"]
    raw = space.with_cleaning("none")
    assert raw.classnames == NAMES
    assert raw.subset([1]).classnames == ["red_velvet_cake"]
    assert space.subset([1]).classnames == ["red velvet cake"]
    with pytest.raises(ConfigError, match="cleaning"):
        space.with_cleaning("lowercase")


def test_clap_tokenises_names_with_underscores_and_coop_family_without(clip):
    space = LabelSpace(NAMES, ["a photo of a {}."])
    clap = create_method("clap", clip, space)
    zero_shot = create_method("zeroshot", clip, space)
    assert clap.labels.classnames == NAMES
    assert zero_shot.labels.classnames == ["apple pie", "red velvet cake", "sushi"]
    raw = encode_texts(clip.text, [f"a photo of a {n}." for n in NAMES])
    cleaned = encode_texts(clip.text, [f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    anchors = torch.nn.functional.normalize(clap.anchors, dim=-1)
    torch.testing.assert_close(anchors, raw, atol=1e-5, rtol=0)
    assert not torch.allclose(anchors[:2], cleaned[:2], atol=1e-3)  # the underscore changes the prompt


@pytest.mark.parametrize("method", ["clip-lora", "tip-adapter", "tip-adapter-f"])
def test_fixed_logit_scale_option(clip, method):
    space = LabelSpace(NAMES)
    default = create_method(method, clip, space)
    fixed = create_method(method, clip, space, logit_scale=100.0)
    assert default.logit_scale == pytest.approx(clip.logit_scale)
    assert fixed.logit_scale == 100.0
    image = torch.nn.functional.normalize(torch.randn(2, clip.text.feature_dim), dim=-1)
    classes = torch.nn.functional.normalize(torch.randn(3, clip.text.feature_dim), dim=-1)
    torch.testing.assert_close(fixed.clip_logits(image, classes), 100.0 * image @ classes.t())


@pytest.mark.parametrize("preset", ["clip-lora-paper", "tip-adapter-paper", "tip-adapter-f-paper"])
def test_official_presets_fix_the_logit_scale_at_100(preset):
    assert load_preset(preset)["method_options"]["logit_scale"] == 100.0
