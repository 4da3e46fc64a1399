"""Full and partial-k fine-tuning baselines: what trains, what stays frozen, and that the caller's backbone
is never modified."""

from __future__ import annotations

import pytest
import torch
from test_visual import tiny_backbone  # pytest puts tests/ on sys.path

import vlprompt.methods.finetune  # noqa: F401
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import create_method

LABELS = LabelSpace(["a", "b", "c"])
BATCH = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 2, 0])}


def _step(method):
    method.train()
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.1)
    method(BATCH)["loss"].backward()
    optimizer.step()


def test_full_finetune_trains_a_copy_of_the_whole_tower():
    backbone = tiny_backbone()
    original = {k: v.clone() for k, v in backbone.visual.state_dict().items()}
    method = create_method("finetune", backbone, LABELS)
    tower = sum(p.numel() for p in backbone.visual.parameters())
    assert sum(p.numel() for p in method.trainable_parameters()) == tower + 32 * 3 + 3
    with torch.no_grad():
        torch.testing.assert_close(method.encode(BATCH["image"]), backbone.visual(BATCH["image"]))
    _step(method)
    assert method.visual.training
    assert all(torch.equal(v, backbone.visual.state_dict()[k]) for k, v in original.items())
    assert not torch.equal(
        method.visual.model.patch_embed.proj.weight, original["model.patch_embed.proj.weight"]
    )


def test_partial_k_trains_only_the_last_blocks_and_head():
    backbone = tiny_backbone(depth=3)
    method = create_method("partial-k", backbone, LABELS, k=1)
    blocks = list(method.visual.block_modules())
    expected = sum(p.numel() for p in blocks[2].parameters()) + 32 * 3 + 3
    assert sum(p.numel() for p in method.trainable_parameters()) == expected
    with torch.no_grad():
        torch.testing.assert_close(method.encode(BATCH["image"]), backbone.visual(BATCH["image"]))
    before = [p.clone() for p in blocks[0].parameters()]
    _step(method)
    assert not method.visual.training and blocks[2].training and not blocks[1].training
    assert all(torch.equal(a, b) for a, b in zip(before, blocks[0].parameters()))
    assert blocks[2].attn.qkv.weight.grad is not None and blocks[1].attn.qkv.weight.grad is None


@pytest.mark.parametrize("k", [0, 4])
def test_partial_k_out_of_range_names_the_field(k):
    with pytest.raises(ConfigError, match=r"\.k ="):
        create_method("partial-k", tiny_backbone(depth=3), LABELS, k=k)
