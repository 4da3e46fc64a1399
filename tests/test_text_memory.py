"""The text step's memory plan: suffixes grouped by own length, recomputation only beyond the budget, the activation
estimate the budget uses held against what autograd really keeps, and exactness of every plan against the plain
path (forward and gradients), in fp32 and under bf16 autocast."""
from __future__ import annotations

import pytest
import torch

from vlprompt.backbones.tiny import tiny_open_clip
from vlprompt.data.base import LabelSpace
from vlprompt.methods import import_all
from vlprompt.methods.base import create_method
from vlprompt.prompts.text import ContextPrompt
from vlprompt.prompts.text_plan import pack_calls, plan_suffix_chunks

NAMES = [
    "dog", "red panda", "kite (bird of prey)", "Mexican hairless dog (xoloitzcuintli)", "sea lion", "x",
    "great white shark", "ram (adult male sheep)", "tench", "goldfish", "hammerhead shark", "electric ray",
]


@pytest.fixture(scope="module")
def clip():
    return tiny_open_clip(seed=0)


def saved_activation_bytes(run, modules) -> int:
    """Distinct storages autograd saves during ``run()``, parameters and buffers of ``modules`` excluded."""
    seen = {t.untyped_storage().data_ptr() for m in modules for t in [*m.parameters(), *m.buffers()]}
    total = 0

    def pack(tensor):
        nonlocal total
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in seen:
            seen.add(pointer)
            total += tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return total


def test_plan_covers_every_class_once_with_one_length_per_call():
    lengths = torch.tensor([3, 1, 3, 2, 5, 1, 3, 2])
    fits = plan_suffix_chunks(lengths, lambda n: 100 * n, budget_bytes=1e9)
    assert [(c.length, c.rows.tolist(), c.recompute) for c in fits] == [
        (1, [1, 5], False), (2, [3, 7], False), (3, [0, 2, 6], False), (5, [4], False)
    ]
    tight = plan_suffix_chunks(lengths, lambda n: 100 * n, budget_bytes=1200)
    assert sorted(int(r) for c in tight for r in c.rows) == list(range(8))
    assert all(bool((lengths[c.rows] == c.length).all()) for c in tight)
    assert any(c.recompute for c in tight) and not all(c.recompute for c in tight)
    kept = sum(c.nbytes for c in tight if not c.recompute)
    assert kept + max(c.nbytes for c in tight if c.recompute) <= 1200
    capped = plan_suffix_chunks(lengths, lambda n: 100 * n, budget_bytes=None, max_rows=2)
    assert max(len(c.rows) for c in capped) == 2 and not any(c.recompute for c in capped)
    # stored chunks share one call (packed), recomputed ones stay alone, and a row cap splits calls
    assert [len(call) for call in pack_calls(fits)] == [4]
    calls = pack_calls(tight)
    assert all(len(call) == 1 for call in calls if call[0].recompute)
    assert all(len({c.recompute for c in call}) == 1 for call in calls)
    assert all(sum(len(c.rows) for c in call) <= 3 for call in pack_calls(fits, max_rows=3))


@pytest.mark.parametrize("n_ctx", [4, 16])
def test_activation_estimate_bounds_what_autograd_keeps(clip, n_ctx):
    text = clip.text
    prompt = ContextPrompt(text, NAMES, n_ctx=n_ctx)
    prefix = prompt.prefix_length
    own = prompt.eot - prefix + 1
    estimate = sum(text.suffix_activation_bytes(prefix, int(n)) for n in own)
    measured = saved_activation_bytes(lambda: prompt(text), [prompt, text])
    assert measured <= estimate <= 1.25 * measured


@pytest.mark.parametrize("memory_mb", [4096.0, 0.02])
def test_every_plan_equals_the_plain_path_with_gradients(clip, memory_mb):
    text = clip.text
    torch.manual_seed(0)
    fast = ContextPrompt(text, NAMES, n_ctx=4, memory_mb=memory_mb)
    plain = ContextPrompt(text, NAMES, n_ctx=4, shared_prefix=False)
    plain.ctx.data.copy_(fast.ctx.data)
    weights = torch.randn(len(NAMES), text.feature_dim, generator=torch.Generator().manual_seed(1))
    plan = fast.plan(text, 1, None, trained=True)
    assert any(c.recompute for c in plan) == (memory_mb < 1)
    out_fast, out_plain = fast(text), plain(text)
    (out_fast * weights).sum().backward()
    (out_plain * weights).sum().backward()
    torch.testing.assert_close(out_fast, out_plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.ctx.grad, plain.ctx.grad, atol=1e-5, rtol=1e-4)


def test_cocoop_per_image_prefixes_equal_the_plain_path(clip):
    text = clip.text
    torch.manual_seed(0)
    fast = ContextPrompt(text, NAMES, n_ctx=4, memory_mb=0.05)
    plain = ContextPrompt(text, NAMES, n_ctx=4, shared_prefix=False)
    plain.ctx.data.copy_(fast.ctx.data)
    bias = torch.randn(3, text.width, generator=torch.Generator().manual_seed(2)) * 0.1
    out_fast, out_plain = fast(text, bias=bias), plain(text, bias=bias)
    assert out_fast.shape == (3, len(NAMES), text.feature_dim)
    out_fast.square().sum().backward()
    out_plain.square().sum().backward()
    torch.testing.assert_close(out_fast, out_plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.ctx.grad, plain.ctx.grad, atol=1e-5, rtol=1e-4)


TEXT_METHODS = ("coop", "kgcoop", "prograd", "cocoop", "maple", "promptsrc")


def context_of(method) -> ContextPrompt:
    """The ContextPrompt that encodes the method's class prompts (CoOp family, CoCoOp: ``prompt``; deep text
    prompts: inside ``text_prompt``)."""
    return method.text_prompt.context if method.config_class.__name__ in ("MaPLeConfig", "PromptSRCConfig") else (
        method.prompt
    )


def text_side_loss(method, name: str, clip, batch: dict) -> torch.Tensor:
    """The loss of the method's text side on cached features: the method's own forward where it takes cached
    features, else (MaPLe, PromptSRC: their image side needs pixels) cross-entropy on their class features."""
    if name in ("maple", "promptsrc"):
        features = method.text_prompt(clip.text)
        image = torch.nn.functional.normalize(batch["features"], dim=-1)
        return torch.nn.functional.cross_entropy(method.clip_logits(image, features.float()), batch["label"])
    return method(batch)["loss"]


@pytest.mark.parametrize("name", TEXT_METHODS)
def test_bf16_autocast_keeps_fp32_master_prompts_and_the_loss_close(clip, name):
    """The frozen tower under bf16 autocast (the Trainer's precision=bf16), prompts stay fp32; the loss stays
    within the tolerance of the bf16 training test (tests/test_data_loading.py: losses within 2e-2 of fp32; measured
    here on the tiny tower: at most 1.4e-2, ProGrad's 16 slots)."""
    import_all()
    method = create_method(name, clip, LabelSpace(NAMES)).train()
    generator = torch.Generator().manual_seed(0)
    batch = {
        "features": torch.randn(8, clip.text.feature_dim, generator=generator),
        "label": torch.randint(0, len(NAMES), (8,), generator=generator),
    }
    ctx = context_of(method).ctx
    fp32 = text_side_loss(method, name, clip, batch)
    (grad32,) = torch.autograd.grad(fp32, ctx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = text_side_loss(method, name, clip, batch)
    (grad16,) = torch.autograd.grad(bf16, ctx)
    assert ctx.dtype == torch.float32 and grad16.dtype == torch.float32
    assert abs(bf16.item() - fp32.item()) < 2e-2
    assert float(torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0)) > 0.98


@pytest.mark.parametrize("name", TEXT_METHODS)
def test_text_memory_option_reaches_every_text_method(clip, name):
    """One option, declared once: every method that encodes class prompts plans its text step from it."""
    import_all()
    method = create_method(name, clip, LabelSpace(NAMES), text_memory_mb=0.02).train()
    prompt = context_of(method)
    assert prompt.memory_mb == 0.02
    assert any(chunk.recompute for chunk in prompt.plan(clip.text, 1, None, trained=True))


def test_fixed_words_after_the_context_join_the_shared_prefix_exactly(clip):
    """MaPLe's start ("a photo" learned, "of a" fixed) runs "of a" once in the prefix; features and the gradients
    of the context and of every deep prompt equal the plain path's."""
    from vlprompt.prompts.deep_text import DeepTextPrompt

    text = clip.text
    torch.manual_seed(0)
    fast = DeepTextPrompt(text, NAMES, n_ctx=2, depth=3, ctx_init="a photo of a")
    plain = DeepTextPrompt(text, NAMES, n_ctx=2, depth=3, ctx_init="a photo of a")
    plain.load_state_dict(fast.state_dict())
    plain.context.shared_prefix = False
    assert fast.context.prefix_length == 1 + 2 + 2  # [SOS, 2 context slots, "of", "a"]
    weights = torch.randn(len(NAMES), text.feature_dim, generator=torch.Generator().manual_seed(1))
    out_fast, out_plain = fast(text), plain(text)
    (out_fast * weights).sum().backward()
    (out_plain * weights).sum().backward()
    torch.testing.assert_close(out_fast, out_plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.context.ctx.grad, plain.context.ctx.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast.deep.grad, plain.deep.grad, atol=1e-5, rtol=1e-4)


def test_shared_prefix_stops_before_the_first_end_token(clip):
    """Classes that share their first words share them in the prefix, but each keeps its EOT as its own token."""
    text = clip.text
    prompt = ContextPrompt(text, ["red panda", "red fox"], n_ctx=4, suffix="")
    assert prompt.prefix_length == 1 + 4 + 1  # "red" joins the prefix; "panda" / "fox" differ
    alone = ContextPrompt(text, ["red panda"], n_ctx=4, suffix="")
    assert alone.prefix_length == int(alone.eot[0])  # one class: everything but its EOT is shared
