"""The NMI diagnostic against a hand computation, and its logging through the trainer callback."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from test_visual import tiny_backbone  # pytest puts tests/ on sys.path

import vlprompt.methods.vpt  # noqa: F401
from vlprompt.analysis.nmi import NMICallback, block_nmi, normalized_mutual_information
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import ImageDataset, LabelSpace, TaskData
from vlprompt.methods.base import create_method


def _by_hand(prompts: list[list[float]], patches: list[list[float]]) -> tuple[float, float, float]:
    """I(P;E), H_P, H_E with plain loops over the 2x3 joint."""
    d = len(prompts[0])
    sig = [
        [1 / (1 + math.exp(-sum(a * b for a, b in zip(p, e)) / math.sqrt(d))) for e in patches]
        for p in prompts
    ]
    total = sum(map(sum, sig))
    joint = [[v / total for v in row] for row in sig]
    pp = [sum(row) for row in joint]
    pe = [sum(joint[k][j] for k in range(len(prompts))) for j in range(len(patches))]
    mutual = sum(
        joint[k][j] * math.log(joint[k][j] / (pp[k] * pe[j]))
        for k in range(len(prompts))
        for j in range(len(patches))
    )
    return mutual, -sum(v * math.log(v) for v in pp), -sum(v * math.log(v) for v in pe)


P = [[2.0, -1.0], [-3.0, 0.5]]
E = [[1.0, 2.0], [-2.0, 1.0], [0.5, -4.0]]


def test_nmi_matches_hand_computed_two_by_three_case():
    mutual, h_p, h_e = _by_hand(P, E)
    prompts, patches = torch.tensor(P), torch.tensor(E)
    expected = {
        "min": mutual / min(h_p, h_e),
        "sqrt": mutual / math.sqrt(h_p * h_e),
        "mean": 2 * mutual / (h_p + h_e),
    }
    for normalization, value in expected.items():
        got = normalized_mutual_information(prompts, patches, normalization)
        assert float(got) == pytest.approx(value, rel=1e-9)
    assert 0 < expected["mean"] <= expected["sqrt"] <= expected["min"] <= 1


def test_nmi_zero_when_independent_and_batched():
    orthogonal = normalized_mutual_information(torch.zeros(2, 4), torch.randn(3, 4))
    assert float(orthogonal) == pytest.approx(0.0, abs=1e-12)
    batch = normalized_mutual_information(torch.tensor([P, P]), torch.tensor([E, E]))
    assert batch.shape == (2,) and torch.allclose(batch[0], batch[1])
    assert float(normalized_mutual_information(torch.randn(1, 4), torch.randn(3, 4))) == 0.0


def test_nmi_bad_normalization_names_the_field():
    with pytest.raises(ConfigError, match="normalization"):
        normalized_mutual_information(torch.tensor(P), torch.tensor(E), "max")


def test_block_nmi_per_block_and_logged_every_n_steps():
    backbone = tiny_backbone(depth=3)
    method = create_method("vpt-deep", backbone, LabelSpace(["a", "b"]), num_tokens=4)
    values = block_nmi(backbone.visual, method.prompts, torch.randn(2, 3, 32, 32))
    assert len(values) == 3 and all(0.0 < v < 1.0 for v in values)  # random prompts: neither independent nor identical

    pixels = torch.randint(0, 256, (5, 32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    dataset = ImageDataset(list(range(5)), [0, 1, 0, 1, 0], load=lambda i: Image.fromarray(pixels[i].numpy()))

    class Recorder:
        def __init__(self):
            self.method = method
            self.records = []

        def log_metrics(self, record):
            self.records.append(record)

    trainer = Recorder()
    callback = NMICallback(every=2, images=3)
    callback.on_fit_start(trainer, TaskData("t", LabelSpace(["a", "b"]), dataset, None, dataset))
    assert callback.probe.shape == (3, 3, 32, 32)
    for step in range(1, 5):
        callback.on_step_end(trainer, step)
    assert [r["step"] for r in trainer.records] == [0, 2, 4]
    assert set(trainer.records[0]) == {"step", "nmi/block0", "nmi/block1", "nmi/block2", "nmi/mean"}
    assert method.prompts.training  # NMI is computed without prompt dropout but leaves the mode as it was


def test_nmi_on_a_saved_checkpoint(tmp_path):
    from vlprompt.analysis.nmi import checkpoint_nmi, method_nmi
    from vlprompt.artifacts.checkpoint import save_prompts

    labels = LabelSpace(["a", "b"])
    trained = create_method("vpt-shallow", tiny_backbone(), labels, num_tokens=3)
    with torch.no_grad():
        trained.prompts.tokens.mul_(20.0)  # far from a fresh init, so loading visibly matters
    save_prompts(trained, tmp_path)
    images = torch.randn(2, 3, 32, 32)
    fresh = create_method("vpt-shallow", tiny_backbone(), labels, num_tokens=3)
    assert checkpoint_nmi(fresh, tmp_path, images) == pytest.approx(method_nmi(trained, images))
