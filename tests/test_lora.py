"""CLIP-LoRA: the LoRA modules against their definition, the fused-attention wrapper against nn.MultiheadAttention,
and the method on every tiny CLIP layout (frozen model at B = 0, merged == unmerged, LoRA-only checkpoints)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from optional_extras import hf_param  # pytest puts tests/ on sys.path
from safetensors.torch import load_file
from torch import nn

from vlprompt.artifacts.checkpoint import load_prompts
from vlprompt.backbones import tiny
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import LabelSpace
from vlprompt.eval.tasks import evaluate
from vlprompt.experiment import transfer_to_labels
from vlprompt.methods.base import create_method
from vlprompt.prompts.lora import LoRADelta, LoRALinear, LoRAMultiheadAttention
from vlprompt.train import Trainer

LABELS = LabelSpace(["circle", "square", "triangle"], ["a photo of a {}."])
LAYOUTS = ["open_clip", "open_clip_custom_text", hf_param("hf_clip")]


def backbone(layout: str):
    return getattr(tiny, f"tiny_{layout}")(seed=0)


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def randomize_b(method) -> None:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in method.named_parameters():
            if name.endswith("lora_B"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def test_lora_linear_is_w_x_plus_scaled_b_a_x_by_hand():
    base = nn.Linear(3, 2)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
        base.bias.copy_(torch.tensor([0.5, -0.5]))
    delta = LoRADelta(3, 2, rank=2, alpha=1.0, dropout=0.0)
    with torch.no_grad():
        delta.lora_A.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
        delta.lora_B.copy_(torch.tensor([[1.0, 1.0], [0.0, 2.0]]))
    layer = LoRALinear(base, delta)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    # W x + b = [7.5, 1.5]; A x = [1, 3]; B A x = [4, 6]; scaling alpha / sqrt(r) = 1 / sqrt(2) (official code)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(layer(x), torch.tensor([[7.5 + 4 * s, 1.5 + 6 * s]]))
    layer.merged = True
    torch.testing.assert_close(layer(x), torch.tensor([[7.5 + 4 * s, 1.5 + 6 * s]]))
    assert LoRADelta(3, 2, rank=2, alpha=1.0, dropout=0.0, rank_scaling="rank").scaling == 0.5


def test_lora_init_matches_official_a_kaiming_b_zero():
    delta = LoRADelta(64, 32, rank=4, alpha=1.0, dropout=0.25)
    assert torch.count_nonzero(delta.lora_B) == 0
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) == nn.Linear's default: U(-1/sqrt(fan_in), ...)
    assert delta.lora_A.abs().max() <= bound and delta.lora_A.abs().max() > 0.8 * bound


def test_dropout_acts_on_the_lora_branch_only_and_only_in_training():
    base = nn.Linear(4, 4)
    delta = LoRADelta(4, 4, rank=2, alpha=1.0, dropout=1.0)  # drops every input of the branch
    nn.init.normal_(delta.lora_B)
    layer = LoRALinear(base, delta)
    x = torch.randn(2, 4)
    layer.train()
    torch.testing.assert_close(layer(x), base(x))  # the frozen path is not dropped
    layer.eval()
    assert not torch.allclose(layer(x), base(x))


@pytest.mark.parametrize("batch_first", [True, False])
def test_fused_attention_wrapper_equals_multihead_attention_with_the_merged_weights(batch_first):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    deltas = {name: LoRADelta(8, 8, rank=2, alpha=1.0, dropout=0.0) for name in "qko"}
    for delta in deltas.values():
        nn.init.normal_(delta.lora_B)
    wrapper = LoRAMultiheadAttention(attention, deltas).eval()
    # the definition: the same module with W_q, W_k, W_o replaced by W + s·B·A
    reference = copy.deepcopy(attention)
    with torch.no_grad():
        reference.in_proj_weight[:8] += deltas["q"].weight()
        reference.in_proj_weight[8:16] += deltas["k"].weight()
        reference.out_proj.weight += deltas["o"].weight()
    x = torch.randn(3, 5, 8) if batch_first else torch.randn(5, 3, 8)  # batch 3, sequence 5
    mask = torch.full((5, 5), float("-inf")).triu_(1)
    expected = reference(x, x, x, need_weights=False, attn_mask=mask)[0]
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x, x, x, need_weights=False, attn_mask=mask)[0], expected,
                                   atol=1e-6, rtol=1e-5)
        wrapper.merged = True
        torch.testing.assert_close(wrapper(x, x, x, need_weights=False, attn_mask=mask)[0], expected,
                                   atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rank", [0, 2])
def test_zero_b_or_rank_zero_equals_the_frozen_towers(layout, rank):
    clip = backbone(layout)
    method = create_method("clip-lora", clip, LABELS, rank=rank, params=["q", "k", "v", "o"]).eval()
    assert method.visual is not clip.visual and method.text is not clip.text
    ids = clip.text.tokenize(["a photo of a circle.", "a square"])
    with torch.no_grad():
        torch.testing.assert_close(method.visual(images()), clip.visual(images()), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(method.text(ids), clip.text(ids), atol=1e-6, rtol=1e-5)
    assert len(method.trainable_parameters()) == (0 if rank == 0 else 2 * 4 * (clip.visual.num_blocks + 2))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_merged_and_unmerged_forwards_agree_and_the_callers_backbone_is_untouched(layout):
    clip = backbone(layout)
    before = clip.weights_hash()
    method = create_method("clip-lora", clip, LABELS, params=["q", "k", "v", "o"]).eval()
    randomize_b(method)
    batch = {"image": images()}
    with torch.no_grad():
        unmerged = method(batch)["logits"]
        method.set_merged(True)
        merged = method(batch)["logits"]
        frozen = create_method("zeroshot", clip, LABELS)({"features": clip.visual(images())})["logits"]
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmerged, frozen, atol=1e-3)  # the updates do act
    clip.extra.pop("_weights_hash")
    assert clip.weights_hash() == before
    assert not any("lora" in name for name, _ in clip.visual.named_parameters())


def test_official_defaults_and_image_feature_caching():
    clip = backbone("open_clip")
    method = create_method("clip-lora", clip, LABELS)
    config = method.config
    assert (config.rank, config.alpha, config.dropout, config.params) == (2, 1.0, 0.25, ["q", "k", "v"])
    assert method.uses_image_features is False  # LoRA in the image tower: features cannot be cached
    assert create_method("clip-lora", clip, LABELS, encoders="text").uses_image_features is True
    only_last = create_method("clip-lora", clip, LABELS, blocks=[1], encoders="vision")
    assert len(only_last.trainable_parameters()) == 2 * 3


@pytest.mark.parametrize("options, field", [({"params": ["q", "x"]}, "params"), ({"blocks": [7]}, "blocks"),
                                            ({"encoders": "audio"}, "encoders"), ({"rank": -1}, "rank")])
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ConfigError, match=field):
        create_method("clip-lora", backbone("open_clip"), LABELS, **options)


def test_checkpoint_holds_only_lora_tensors_and_transfers_to_new_classes(tmp_path):
    from test_text_training import toy_task, train_config

    clip = backbone("open_clip")
    task = toy_task()
    method = create_method("clip-lora", clip, task.labels)
    Trainer(method, train_config(epochs=1), out_dir=tmp_path).fit(task)
    stored = load_file(str(tmp_path / "prompts.safetensors"))
    assert stored and all(name.endswith(("lora_A", "lora_B")) for name in stored)
    assert any(torch.count_nonzero(t) for name, t in stored.items() if name.endswith("lora_B"))
    fresh = create_method("clip-lora", clip, task.labels)
    load_prompts(fresh, tmp_path)
    assert evaluate(fresh, task.test, batch_size=4) == evaluate(method, task.test, batch_size=4)
    new_classes = LabelSpace(["hexagon", "star"], ["a photo of a {}."])
    moved = transfer_to_labels(method, new_classes)  # LoRA weights are class-agnostic (base-to-new works)
    assert moved is not None and moved.labels.classnames == ["hexagon", "star"]
