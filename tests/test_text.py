"""CLIP text-prompt methods: exactness against zero-shot CLIP, prompt layout, losses, router, caches, bad input."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from optional_extras import hf_param, tiny_text_layouts  # pytest puts tests/ on sys.path

import vlprompt.methods.cocoop
import vlprompt.methods.coop
import vlprompt.methods.kgcoop
import vlprompt.methods.mocoop
import vlprompt.methods.prograd
import vlprompt.methods.zeroshot  # noqa: F401
from vlprompt.core.errors import CheckpointError, ConfigError, VlpromptError
from vlprompt.data.base import LabelSpace
from vlprompt.losses import gating_kl, grouped_text_ce, kg_distance, prograd_project
from vlprompt.methods.base import create_method
from vlprompt.prompts.text import ContextPrompt, hand_crafted_features

CLASSES = ["dog", "cat", "red panda", "sea lion"]
GROUPS = {
    "photo": ["a photo of a {}.", "a picture of a {}."],
    "neon": ["a {} in neon lights.", "a neon {}."],
    "sketch": ["a sketch of a {}.", "a doodle of a {}."],
}


@pytest.fixture(scope="module")
def backbones():
    return tiny_text_layouts()


@pytest.fixture(scope="module")
def clip(backbones):
    return backbones["open_clip"]


def labels(templates=("a photo of a {}.",), groups=None, classes=CLASSES) -> LabelSpace:
    return LabelSpace(list(classes), list(templates), dict(groups or {}))


def features(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["open_clip", "open_clip_custom_text", "open_clip_cls_token", hf_param("hf_clip")])
@pytest.mark.parametrize("template", ["a photo of a {}.", "a {} in neon lights."])
def test_coop_from_template_words_equals_zero_shot(backbones, name, template):
    backbone = backbones[name]
    space = labels([template])
    zero_shot = create_method("zeroshot", backbone, space).eval()
    coop = create_method("coop", backbone, space, ctx_init="template").eval()
    with torch.no_grad():
        expected = zero_shot({"features": features()})["logits"]
        got = coop({"features": features()})["logits"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_coop_from_words_equals_zero_shot_and_the_library_encoder(clip):
    import open_clip

    space = labels()
    coop = create_method("coop", clip, space, ctx_init="a photo of a").eval()
    assert coop.prompt.n_ctx == 4
    ids = open_clip.tokenize([f"a photo of a {c}." for c in CLASSES])
    model_features = torch.nn.functional.normalize(clip.text(ids), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(coop.class_features(), model_features, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["open_clip", hf_param("hf_clip")])
def test_fast_paths_equal_the_plain_path(backbones, name):
    """Truncation at the EOT and the shared [SOS, ctx] prefix leave the features unchanged."""
    text = backbones[name].text
    torch.manual_seed(0)
    fast = ContextPrompt(text, CLASSES, n_ctx=5, shared_prefix=True)
    plain = ContextPrompt(text, CLASSES, n_ctx=5, shared_prefix=False)
    plain.ctx.data.copy_(fast.ctx.data)
    reference = []
    for row in range(len(CLASSES)):  # full 77-slot sequence, no fast path
        embeddings = text.embed_tokens(text.tokenize([f"X X X X X {CLASSES[row]}."]))
        embeddings[0, 1:6] = fast.ctx
        ids = text.tokenize([f"X X X X X {CLASSES[row]}."])
        reference.append(text.encode_embeddings(embeddings, ids, truncate=False))
    reference = torch.nn.functional.normalize(torch.cat(reference), dim=-1)
    torch.testing.assert_close(fast(text), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain(text), reference, atol=1e-5, rtol=0)
    assert fast.token_ids.shape[1] < text.context_length  # sequences were cut after the longest EOT


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_class_position_token_order(clip, position):
    text = clip.text
    prompt = ContextPrompt(text, ["red panda"], n_ctx=4, position=position)
    name = text.tokenize(["red panda"])[0, 1:3].tolist()
    x, period = text.tokenize(["X"])[0, 1].item(), text.tokenize(["."])[0, 1].item()
    ids = prompt.token_ids[0].tolist()
    slots = prompt.slot[0].tolist()
    expected = {
        "end": [x, x, x, x, *name, period],
        "middle": [x, x, *name, x, x, period],
        "front": [*name, x, x, x, x, period],
    }[position]
    assert ids[1:8] == expected
    ctx_positions = [i for i, s in enumerate(slots) if s < 4]
    assert [slots[i] for i in ctx_positions] == [0, 1, 2, 3]
    assert [ids[i] for i in ctx_positions] == [x] * 4
    assert int(prompt.eot[0]) == 8


def test_class_specific_context_trains_per_class(clip):
    method = create_method("coop", clip, labels(), n_ctx=2, class_specific=True).train()
    assert method.prompt.ctx.shape == (len(CLASSES), 2, clip.text.width)
    out = method({"features": features(), "label": torch.tensor([0, 0, 1, 1, 0, 1])})
    out["loss"].backward()
    grad = method.prompt.ctx.grad
    assert grad[:2].abs().sum() > 0
    assert method.class_dependent_parameter_names() == {"prompt.ctx"}


def test_class_chunking_with_checkpointing_matches_one_call(clip):
    torch.manual_seed(0)
    prompt = ContextPrompt(clip.text, CLASSES, n_ctx=3, class_chunk=1)
    weights = torch.randn(len(CLASSES), clip.text.feature_dim)
    one = prompt(clip.text, chunk=len(CLASSES))
    (one * weights).sum().backward()
    grad_one = prompt.ctx.grad.clone()
    prompt.ctx.grad = None
    chunked = prompt(clip.text)
    (chunked * weights).sum().backward()
    torch.testing.assert_close(chunked, one, atol=1e-6, rtol=0)
    torch.testing.assert_close(prompt.ctx.grad, grad_one, atol=1e-5, rtol=1e-4)


def test_prograd_projection_on_hand_made_gradients():
    g_d = torch.tensor([1.0, 1.0])
    obtuse = torch.tensor([-1.0, 0.0])
    projected = prograd_project(g_d, obtuse, lam=1.0)
    torch.testing.assert_close(projected, torch.tensor([0.0, 1.0]))
    assert torch.dot(projected, obtuse).abs() < 1e-7
    torch.testing.assert_close(prograd_project(g_d, obtuse, lam=0.5), torch.tensor([0.5, 1.0]))
    acute = torch.tensor([1.0, -0.5])
    assert torch.equal(prograd_project(g_d, acute, lam=1.0), g_d)
    assert torch.equal(prograd_project(g_d, obtuse, lam=0.0), g_d)


@pytest.mark.parametrize("name", ["open_clip", hf_param("hf_clip")])
def test_prograd_lambda_zero_is_coop_and_projection_is_applied(backbones, name):
    clip = backbones[name]
    batch = {"features": features(), "label": torch.tensor([0, 1, 2, 3, 0, 1])}
    torch.manual_seed(1)
    coop = create_method("coop", clip, labels(), n_ctx=4).train()
    torch.manual_seed(1)
    prograd0 = create_method("prograd", clip, labels(), n_ctx=4, ctx_init="", lam=0.0).train()
    (coop_grad,) = torch.autograd.grad(coop(batch)["loss"], [coop.prompt.ctx])
    out = prograd0(batch)
    assert "loss_kl" not in out
    (grad0,) = prograd0.grad_transform(out, [prograd0.prompt.ctx])
    torch.testing.assert_close(grad0, coop_grad)

    torch.manual_seed(1)
    prograd = create_method("prograd", clip, labels(), n_ctx=4, ctx_init="").train()
    out = prograd(batch)
    params = [prograd.prompt.ctx]
    g_d = torch.autograd.grad(out["loss"], params, retain_graph=True)[0]
    g_g = torch.autograd.grad(out["loss_kl"], params, retain_graph=True)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the batched backward must not fall back to a slow per-sample loop
        (grad,) = prograd.grad_transform(out, params)
    # the batched backward sums in another order than two separate ones: fp32 rounding (measured 2e-5 relative)
    torch.testing.assert_close(grad, prograd_project(g_d, g_g, 1.0), atol=1e-6, rtol=1e-4)
    assert torch.sum(grad * g_g) >= -1e-6  # never conflicts with the zero-shot direction


def test_kgcoop_zero_distance_adds_zero(clip):
    hand = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    assert kg_distance(hand, hand).abs() < 1e-6
    method = create_method("kgcoop", clip, labels(), ctx_init="template").train()
    out = method({"features": features(), "label": torch.tensor([0, 1, 2, 3, 0, 1])})
    assert out["loss_kg"].abs() < 1e-6
    ce = torch.nn.functional.cross_entropy(out["logits"], torch.tensor([0, 1, 2, 3, 0, 1]))
    torch.testing.assert_close(out["loss"], ce, atol=1e-5, rtol=0)


def test_text_to_text_loss_option_adds_the_grouped_loss_over_all_templates(clip):
    space = labels(["a photo of a {}.", "a sketch of a {}."])
    method = create_method("coop", clip, space, ctx_init="a photo of a", text_loss_weight=2.0).train()
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    out = method({"features": features(), "label": target})
    with torch.no_grad():
        text_loss = grouped_text_ce(method.class_features(), method.template_features(), method.logit_scale)
    expected = torch.nn.functional.cross_entropy(out["logits"], target) + 2.0 * text_loss
    torch.testing.assert_close(out["loss"], expected, atol=1e-5, rtol=1e-5)


def test_grouped_text_loss_hand_case():
    soft = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    hard = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])  # template 2 swaps the classes
    scale = 2.0
    right = -math.log(math.exp(2) / (math.exp(2) + 1))
    wrong = -math.log(1 / (math.exp(2) + 1))
    assert grouped_text_ce(soft, hard, scale).item() == pytest.approx((right + wrong) / 2, abs=1e-6)


def test_gating_kl_is_zero_when_router_agrees():
    router = torch.tensor([[2.0, 0.0, -1.0]])
    assert gating_kl(router.softmax(-1), router).abs() < 1e-6
    assert gating_kl(torch.tensor([[0.0, 0.0, 1.0]]), router) > 0


def test_router_picks_k_experts_with_weights_summing_to_one(clip):
    method = create_method("mocoop", clip, labels(groups=GROUPS), top_k=2).eval()
    with torch.no_grad():
        out = method({"features": features(8)})
    assert out["experts"].shape == (8, 2)
    assert all(len(set(row)) == 2 for row in out["experts"].tolist())
    torch.testing.assert_close(out["weights"].sum(-1), torch.ones(8))
    logits = method.mixture.router(torch.nn.functional.normalize(features(8), dim=-1))
    assert torch.equal(out["experts"], logits.topk(2, dim=-1).indices)


def test_mixture_logits_equal_explicit_mixing(clip):
    method = create_method("mocoop", clip, labels(groups=GROUPS)).eval()
    with torch.no_grad():
        out = method({"features": features()})
        experts = method.mixture.expert_features(clip.text, range(3))
        mixed = (out["weights"][:, :, None, None] * experts[out["experts"]]).sum(1)
        image = torch.nn.functional.normalize(features(), dim=-1)
        expected = clip.logit_scale * torch.einsum("bd,bcd->bc", image, torch.nn.functional.normalize(mixed, dim=-1))
    torch.testing.assert_close(out["logits"], expected, atol=1e-4, rtol=1e-5)


def test_mixture_experts_start_from_their_templates(clip):
    method = create_method("mocoop", clip, labels(groups=GROUPS)).eval()
    hard = hand_crafted_features(clip.text, CLASSES, [group[0] for group in GROUPS.values()])
    with torch.no_grad():
        torch.testing.assert_close(method.mixture.expert_features(clip.text, range(3)), hard, atol=1e-6, rtol=0)


def test_mixture_training_step_uses_all_three_losses(clip):
    method = create_method("mocoop", clip, labels(groups=GROUPS)).train()
    out = method({"features": features(), "label": torch.tensor([0, 1, 2, 3, 0, 1])})
    assert {"loss_text", "loss_gate"} <= set(out)
    out["loss"].backward()
    assert method.mixture.router.weight.grad.abs().sum() > 0


def test_cocoop_batched_equals_one_image_at_a_time(clip):
    torch.manual_seed(0)
    method = create_method("cocoop", clip, labels(), prompts_per_call=3).eval()
    with torch.no_grad():
        batched = method({"features": features(5)})["logits"]
        single = torch.cat([method({"features": features(5)[i : i + 1]})["logits"] for i in range(5)])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-5)


def test_class_features_are_computed_once_per_evaluation(clip, monkeypatch):
    method = create_method("coop", clip, labels(), n_ctx=4).eval()
    calls = []
    original = type(method.prompt).forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(method.prompt), "forward", counting)
    with torch.no_grad():
        for _ in range(3):
            method({"features": features()})
    assert len(calls) == 1
    optimizer = torch.optim.SGD([method.prompt.ctx], lr=1.0)
    method.prompt.ctx.grad = torch.ones_like(method.prompt.ctx)
    optimizer.step()  # a changed prompt must not be served from the cache
    with torch.no_grad():
        method({"features": features()})
    assert len(calls) == 2


def test_new_class_list_reuses_shared_context(clip):
    method = create_method("coop", clip, labels(), n_ctx=4).eval()
    with torch.no_grad():
        method.prompt.ctx.add_(0.1)
        before = method({"features": features()})["logits"]
        method.set_labels(labels(classes=["fox", "owl"]))
        after = method({"features": features()})["logits"]
        method.set_labels(labels())
        again = method({"features": features()})["logits"]
    assert after.shape == (6, 2)
    torch.testing.assert_close(again, before)


def test_zero_shot_ensemble_is_mean_of_normalised_features(clip):
    space = labels(["a photo of a {}.", "a sketch of a {}."])
    method = create_method("zeroshot-ensemble", clip, space).eval()
    per_template = hand_crafted_features(clip.text, CLASSES, space.templates)
    expected = torch.nn.functional.normalize(per_template.mean(0), dim=-1)
    torch.testing.assert_close(method.hand_features(ensemble=True), expected)
    assert method.trainable_parameters() == []


# ----- bad input -----
def test_class_name_past_context_length_names_the_class(clip):
    long_name = " ".join(["supercalifragilistic"] * 40)
    with pytest.raises(ConfigError, match="supercalifragilistic"):
        create_method("coop", clip, labels(classes=["dog", long_name]), n_ctx=4)
    with pytest.raises(ConfigError, match="supercalifragilistic"):
        create_method("zeroshot", clip, labels(classes=["dog", long_name]))({"features": features()})
    with pytest.raises(ConfigError, match="n_ctx"):
        create_method("coop", clip, labels(classes=["dog", " ".join(["cat"] * 60)]), n_ctx=16)


def test_template_without_placeholder(clip):
    with pytest.raises(ConfigError, match="exactly one"):
        labels(["a photo of a thing."])
    with pytest.raises(ConfigError, match="exactly one"):
        create_method("coop", clip, labels(), ctx_init="a photo of {} {}")


def test_mixture_bad_groups_and_top_k(clip):
    with pytest.raises(ConfigError, match="template_groups"):
        create_method("mocoop", clip, labels())
    with pytest.raises(VlpromptError, match="cartoon"):
        create_method("mocoop", clip, labels(groups=GROUPS), groups=["photo", "cartoon"])
    with pytest.raises(ConfigError, match="top_k"):
        create_method("mocoop", clip, labels(groups=GROUPS), top_k=4)


def test_bad_method_options(clip):
    with pytest.raises(ConfigError, match="class_position"):
        create_method("coop", clip, labels(), class_position="left")
    with pytest.raises(ConfigError, match="lam"):
        create_method("prograd", clip, labels(), lam=-1)
    with pytest.raises(ConfigError, match="n_ctx"):
        create_method("coop", clip, labels(), n_ctx=0)


def test_class_specific_context_refuses_other_classes(clip):
    method = create_method("coop", clip, labels(), n_ctx=2, class_specific=True)
    with pytest.raises(CheckpointError, match="class_specific"):
        method.set_labels(labels(classes=["fox", "owl"]))
