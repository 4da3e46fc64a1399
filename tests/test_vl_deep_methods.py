"""IVLP, MaPLe, PromptSRC against their definitions on tiny CLIPs (hand-computed values), and through the Trainer."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from optional_extras import needs_transformers  # pytest puts tests/ on sys.path
from PIL import Image
from safetensors.torch import load_file

from vlprompt.artifacts.checkpoint import load_prompts, save_prompts
from vlprompt.backbones.tiny import tiny_hf_clip, tiny_open_clip
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import ImageDataset, LabelSpace, TaskData
from vlprompt.eval.tasks import evaluate
from vlprompt.losses import gaussian_epoch_weights, logit_kl_per_entry
from vlprompt.methods import create_method, list_methods
from vlprompt.methods.promptsrc import official_templates
from vlprompt.prompts.text import encode_texts
from vlprompt.train import TrainConfig, Trainer

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def clip():
    return tiny_open_clip(seed=0)


def space(templates=("a photo of a {}.",), classes=CLASSES) -> LabelSpace:
    return LabelSpace(list(classes), list(templates), {})


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def hand_vision_features(backbone, prompts: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The official vision forward by hand on open_clip's modules: layer-0 prompts appended after the patches
    before ln_pre, layer-i prompts overwrite the last n tokens, CLS readout."""
    visual = backbone.extra["model"].visual
    n = prompts[0].shape[0]
    tokens = visual.conv1(x).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    tokens = torch.cat([cls, tokens], dim=1) + visual.positional_embedding
    tokens = visual.ln_pre(torch.cat([tokens, prompts[0].expand(x.shape[0], -1, -1)], dim=1))
    for index, block in enumerate(visual.transformer.resblocks):
        if 0 < index < len(prompts):
            tokens = torch.cat([tokens[:, :-n], prompts[index].expand(x.shape[0], -1, -1)], dim=1)
        tokens = block(tokens)
    return torch.nn.functional.normalize(visual.ln_post(tokens[:, 0]) @ visual.proj, dim=-1)


def test_methods_are_registered():
    assert {"ivlp", "maple", "promptsrc"} <= set(list_methods())


def test_ivlp_without_deep_or_vision_prompts_is_zero_shot_clip(clip):
    """Depth 1 with all four init words learned and no vision prompts: exactly zero-shot "a photo of a {}."."""
    labels = space()
    ivlp = create_method("ivlp", clip, labels, n_ctx_text=4, depth_text=1, depth_vision=0).eval()
    zero_shot = create_method("zeroshot", clip, labels).eval()
    x = images()
    with torch.no_grad():
        expected = zero_shot({"features": clip.visual(x)})["logits"]
        torch.testing.assert_close(ivlp({"image": x})["logits"], expected, atol=1e-4, rtol=0)


def test_ivlp_vision_prompts_follow_the_official_forward(clip):
    ivlp = create_method("ivlp", clip, space(), n_ctx_vision=2, depth_vision=2).eval()
    assert ivlp.vision_prompt.tokens.shape == (2, 2, clip.visual.width)
    x = images()
    with torch.no_grad():
        expected = hand_vision_features(clip, ivlp.vision_prompt.layer_prompts(), x)
        torch.testing.assert_close(ivlp.encode_images(x), expected, atol=1e-5, rtol=0)


def test_maple_vision_prompts_are_the_coupled_text_prompts(clip):
    maple = create_method("maple", clip, space(), n_ctx=2, depth=2).eval()
    text_prompts = maple.text_prompt.layer_prompts()
    assert len(text_prompts) == len(maple.coupling) == 2
    with torch.no_grad():
        vision = maple.vision_prompts()
        for layer, text_prompt, got in zip(maple.coupling, text_prompts, vision):
            torch.testing.assert_close(got, text_prompt @ layer.weight.T + layer.bias)
            assert got.shape == (2, clip.visual.width)
        x = images()
        torch.testing.assert_close(maple.encode_images(x), hand_vision_features(clip, vision, x), atol=1e-5, rtol=0)
    # the vision prompts are not parameters of their own: only text prompts and couplings train
    assert set(maple.trainable_state_dict()) == {
        "text_prompt.context.ctx", "text_prompt.deep", *(f"coupling.{i}.{p}" for i in (0, 1) for p in ("weight", "bias"))
    }


def test_maple_deeper_couplings_start_as_copies_like_the_official_clones():
    """On the world CLIP (3 text layers, 4 image blocks) depth 9 prompts 3 layers: coupling 0 is its own Linear,
    couplings 1 and 2 are copies of one Linear, as the official ``_get_clones``."""
    from vlprompt.backbones.registry import create_backbone

    maple = create_method("maple", create_backbone("world:clip"), space())
    assert len(maple.coupling) == 3 and maple.text_prompt.deep.shape[0] == 2
    first, second, third = maple.coupling
    assert torch.equal(second.weight, third.weight) and torch.equal(second.bias, third.bias)
    assert not torch.equal(first.weight, second.weight)
    assert second.weight is not third.weight  # copies, trained separately


def test_maple_gradient_reaches_text_prompts_through_both_towers(clip):
    maple = create_method("maple", clip, space(), n_ctx=2, depth=2).train()
    out = maple({"image": images(), "label": torch.tensor([0, 1, 2, 0])})
    out["loss"].backward()
    # the deep text prompt drives layer 1 of both towers
    assert maple.text_prompt.deep.grad.abs().sum() > 0 and maple.coupling[1].weight.grad.abs().sum() > 0


def test_promptsrc_loss_is_the_hand_computed_sum(clip):
    templates = ("a photo of a {}.", "a sketch of a {}.")
    labels = space(templates)
    method = create_method("promptsrc", clip, labels, templates="task", n_ctx_text=2, n_ctx_vision=2).train()
    x, y = images(), torch.tensor([0, 1, 2, 1])
    out = method({"image": x, "label": y})
    with torch.no_grad():
        t = method.text_prompt(clip.text)
        v = method.encode_images(x)
        v0 = torch.nn.functional.normalize(clip.visual(x), dim=-1)
        model = clip.extra["model"]
        raw = [model.encode_text(clip.text.tokenize([tpl.format(c) for c in CLASSES])) for tpl in templates]
        teacher = torch.nn.functional.normalize(sum(raw) / len(raw), dim=-1)
        s = clip.logit_scale
        logits, zs = s * v @ t.T, s * v0 @ teacher.T
        ce = torch.nn.functional.cross_entropy(logits, y)
        l1_text = (t - teacher).abs().mean()
        l1_image = (v - v0).abs().mean()
        p_zs, log_p = zs.softmax(-1), logits.log_softmax(-1)
        kl = (p_zs * (p_zs.log() - log_p)).sum() / logits.numel()
        expected = ce + 25 * l1_text + 10 * l1_image + 1 * kl
    assert l1_text > 0 and l1_image > 0 and kl > 0
    for key, value in (("loss_ce", ce), ("loss_text", l1_text), ("loss_image", l1_image), ("loss_logits", kl)):
        torch.testing.assert_close(out[key].detach(), value, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["loss"].detach(), expected, atol=1e-4, rtol=1e-4)
    # evaluation is IVLP's: no regularisers, no second image forward
    assert set(method.eval()({"image": x, "label": y})) == {"loss", "logits"}


def test_promptsrc_defaults_are_the_official_recipe(clip):
    method = create_method("promptsrc", clip, space())
    config = method.config
    assert (config.text_loss_weight, config.image_loss_weight, config.logit_loss_weight) == (25, 10, 1)
    assert (config.gpa_mean, config.gpa_std, config.n_ctx_text, config.n_ctx_vision) == (15, 1, 4, 4)
    assert (config.depth_text, config.depth_vision) == (9, 9)
    templates = official_templates()
    assert len(templates) == 60 and templates[0] == "a photo of a {}." and templates[-1] == "itap of the {}."
    assert method.train_defaults["lr"] == 0.0025 and method.train_defaults["epochs"] == 20


def test_logit_kl_is_zero_shot_as_target_per_entry():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    p, q = teacher.softmax(-1), student.softmax(-1)
    expected = (p * (p / q).log()).sum() / 6  # KL(p_zs || p_student) summed over rows, divided by B*C
    torch.testing.assert_close(logit_kl_per_entry(student, teacher), expected)
    assert logit_kl_per_entry(teacher, teacher) == 0


def test_gpa_weights_are_the_official_normalised_gaussian():
    weights = gaussian_epoch_weights(5, mean=3, std=1)
    raw = torch.tensor([math.exp(-0.5 * (e - 3) ** 2) for e in range(1, 6)], dtype=torch.float64)
    torch.testing.assert_close(weights, raw / raw.sum())
    # the official expression, (1/(σ√2π))·exp(-½((e-μ)/σ)²) normalised over e = 1..20, mean 15, std 1
    official = np.array([np.exp(-0.5 * ((e - 15) / 1) ** 2) / np.sqrt(2 * np.pi) for e in range(1, 21)])
    torch.testing.assert_close(gaussian_epoch_weights(20, 15, 1), torch.from_numpy(official / official.sum()))
    assert torch.isfinite(gaussian_epoch_weights(5, mean=1000, std=1)).all()


def test_gpa_replaces_the_prompts_by_the_weighted_average_of_epoch_snapshots(clip):
    method = create_method("promptsrc", clip, space(), gpa_mean=2, gpa_std=0.5, n_ctx_text=2, n_ctx_vision=2)
    trainer = SimpleNamespace(config=SimpleNamespace(epochs=3))
    params = method.trainable_parameters()
    snapshots = []
    for epoch in range(3):
        with torch.no_grad():
            for p in params:
                p.normal_()
        snapshots.append([p.detach().clone() for p in params])
        method.on_epoch_end(epoch, trainer)
    w = [math.exp(-0.5 * ((e - 2) / 0.5) ** 2) for e in (1, 2, 3)]
    w = [x / sum(w) for x in w]
    for index, p in enumerate(params):
        expected = sum(w[e] * snapshots[e][index] for e in range(3))
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-6)


def test_gpa_off_keeps_the_last_prompts(clip):
    method = create_method("promptsrc", clip, space(), gpa=False)
    before = [p.detach().clone() for p in method.trainable_parameters()]
    method.on_epoch_end(0, SimpleNamespace(config=SimpleNamespace(epochs=1)))
    assert all(torch.equal(a, b) for a, b in zip(before, method.trainable_parameters()))


@pytest.mark.parametrize("name", ["ivlp", "maple", "promptsrc"])
def test_class_chunks_give_the_same_logits(clip, name):
    """Many classes go through the text tower in chunks (bounded memory) with unchanged logits."""
    classes = [f"thing {i}" for i in range(7)]
    torch.manual_seed(0)
    whole = create_method(name, clip, space(classes=classes)).eval()
    torch.manual_seed(0)
    chunked = create_method(name, clip, space(classes=classes), class_chunk=2).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(chunked({"image": x})["logits"], whole({"image": x})["logits"], atol=1e-5, rtol=0)


@needs_transformers
def test_works_on_hf_clip():
    backbone = tiny_hf_clip(seed=0)
    for name in ("ivlp", "maple", "promptsrc"):
        method = create_method(name, backbone, space()).train()
        out = method({"image": images(), "label": torch.tensor([0, 1, 2, 0])})
        out["loss"].backward()
        assert all(p.grad is not None for p in method.trainable_parameters())


def test_bad_options_name_the_field(clip):
    with pytest.raises(ConfigError, match="n_ctx_text"):
        create_method("ivlp", clip, space(), n_ctx_text=0)
    with pytest.raises(ConfigError, match="templates"):
        create_method("promptsrc", clip, space(), templates="imagenet")
    with pytest.raises(ConfigError, match="n_ctx"):
        create_method("maple", clip, space(), n_ctx=6)  # "a photo of a" has only 4 tokens


class ToyLoader:
    def __call__(self, source: str) -> Image.Image:
        index = int(source.split("/")[-1])
        base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]])[index % 3]
        pixels = np.clip(base + np.random.default_rng(index).normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels)


def toy_task() -> TaskData:
    def split(name: str, start: int, count: int) -> ImageDataset:
        indices = range(start, start + count)
        return ImageDataset([f"toy/{name}/{i}" for i in indices], [i % 3 for i in indices], ToyLoader(), name=f"toy:{name}")

    return TaskData("toy", space(), split("train", 0, 8), split("test", 1000, 6))


@pytest.mark.parametrize("name", ["ivlp", "maple", "promptsrc"])
def test_trains_with_the_trainer_and_round_trips_a_prompt_checkpoint(clip, tmp_path, name):
    task = toy_task()
    method = create_method(name, clip, task.labels)
    before = {n: t.clone() for n, t in method.trainable_state_dict().items()}
    config = TrainConfig(epochs=2, batch_size=4, lr=0.01, augment="none", device="cpu", progress=False)
    Trainer(method, config).fit(task)
    after = method.trainable_state_dict()
    assert all(not torch.equal(before[n], after[n]) for n in after)
    accuracy = evaluate(method, task.test, batch_size=3)
    stored = load_file(str(save_prompts(method, tmp_path)))
    assert set(stored) == set(after)  # only prompts (and MaPLe's couplings), never a backbone weight
    fresh = create_method(name, clip, task.labels)
    load_prompts(fresh, tmp_path)
    assert evaluate(fresh, task.test, batch_size=3) == accuracy
    # base-to-new: the same prompts serve other class names
    fresh.set_labels(space(classes=["star", "ring"]))
    with torch.no_grad():
        assert fresh.eval()({"image": images(2)})["logits"].shape == (2, 2)


def test_official_templates_encode(clip):
    features = encode_texts(clip.text, [t.format("circle") for t in official_templates()])
    assert features.shape == (60, clip.text.feature_dim)


@pytest.mark.parametrize("preset", ["ivlp-paper", "maple-paper", "maple-dg-paper", "promptsrc-paper"])
def test_presets_build_the_method_and_train_configs(preset):
    import yaml

    from vlprompt.core.config import build_config
    from vlprompt.methods import METHODS, import_all

    path = Path(__file__).resolve().parents[1] / "src" / "vlprompt" / "presets" / f"{preset}.yaml"
    data = yaml.safe_load(path.read_text())
    assert {"description", "source", "method", "method_options", "train"} <= set(data)
    import_all()
    cls = METHODS.get(data["method"])
    build_config(cls.config_class, data["method_options"])
    train = build_config(TrainConfig, data["train"])
    # the official (Dassl) warm-up: one epoch at a constant 1e-5, then cosine over all epochs, lr set per epoch
    assert (train.warmup_epochs, train.warmup_type, train.warmup_lr) == (1, "constant", pytest.approx(1e-5))
    assert (train.lr_update, train.cosine_span) == ("epoch", "all_epochs")
