"""Deep text prompts (the text adapters' ``deep`` seam): exact against CoOp, the plain forward and a hand-run transformer."""
from __future__ import annotations

import pytest
import torch
from optional_extras import hf_param, tiny_text_layouts  # pytest puts tests/ on sys.path

from vlprompt.core.errors import ConfigError
from vlprompt.prompts.deep_text import DeepTextPrompt, split_init_words
from vlprompt.prompts.text import ContextPrompt

CLASSES = ["dog", "cat", "red panda", "sea lion"]
NAMES = ["open_clip", "open_clip_custom_text", "open_clip_cls_token", hf_param("hf_clip")]


@pytest.fixture(scope="module")
def backbones():
    return tiny_text_layouts()


def random_deep(text, n_ctx: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n_ctx, text.width, generator=generator) for _ in range(text.num_layers - 1))


@pytest.mark.parametrize("name", NAMES)
def test_zero_depth_is_the_coop_path(backbones, name):
    """Depth 1 (no deep prompts) gives exactly CoOp's features from the same context."""
    text = backbones[name].text
    torch.manual_seed(0)
    deep = DeepTextPrompt(text, CLASSES, n_ctx=3, depth=1, ctx_init="")
    coop = ContextPrompt(text, CLASSES, n_ctx=3)
    coop.ctx.data.copy_(deep.context.ctx.data)
    assert deep.deep is None and deep.deep_prompts() == ()
    with torch.no_grad():
        torch.testing.assert_close(deep(text), coop(text), atol=0, rtol=0)
        torch.testing.assert_close(coop(text, deep=()), coop(text), atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_deep_prompts_copied_from_the_blocks_own_inputs_give_the_plain_forward(backbones, name, monkeypatch):
    """Overwriting positions 1..n of layer i's input with what is already there changes nothing."""
    text = backbones[name].text
    prompt = ContextPrompt(text, CLASSES, n_ctx=3, shared_prefix=False)
    inputs: dict[int, torch.Tensor] = {}
    run_layer = text.run_layer

    def recording(index, hidden, mask):
        inputs[index] = hidden.detach().clone()
        return run_layer(index, hidden, mask)

    with torch.no_grad():
        monkeypatch.setattr(text, "run_layer", recording)
        plain = prompt(text)
        monkeypatch.undo()
        # every row shares [SOS, ctx], so under causality the inputs at positions 1..3 agree across classes
        copied = tuple(inputs[i][0, 1:4] for i in range(1, text.num_layers))
        for i in range(1, text.num_layers):
            torch.testing.assert_close(inputs[i][:, 1:4], copied[i - 1].expand(len(CLASSES), -1, -1))
        torch.testing.assert_close(prompt(text, deep=copied), plain, atol=1e-6, rtol=0)
        other = prompt(text, deep=random_deep(text, 3))
    assert (other - plain).abs().max() > 1e-3  # the seam is live: other tokens change the features


@pytest.mark.parametrize("name", NAMES)
def test_fast_paths_with_deep_prompts_equal_the_full_sequence(backbones, name):
    """Truncation and the shared [SOS, ctx] prefix stay exact with deep prompts (or fall back where not exact)."""
    text = backbones[name].text
    torch.manual_seed(0)
    fast = ContextPrompt(text, CLASSES, n_ctx=3, shared_prefix=True)
    plain = ContextPrompt(text, CLASSES, n_ctx=3, shared_prefix=False)
    plain.ctx.data.copy_(fast.ctx.data)
    deep = random_deep(text, 3)
    reference = []
    for name_ in CLASSES:  # every context slot, no truncation, no shared prefix
        ids = text.tokenize([f"X X X {name_}."])
        embeddings = text.embed_tokens(ids)
        embeddings[0, 1:4] = fast.ctx
        reference.append(text.encode_embeddings(embeddings, ids, truncate=False, deep=deep))
    reference = torch.nn.functional.normalize(torch.cat(reference), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(fast(text, deep=deep), reference, atol=1e-5, rtol=0)
        torch.testing.assert_close(plain(text, deep=deep), reference, atol=1e-5, rtol=0)


def test_deep_prompts_match_a_hand_run_open_clip_transformer(backbones):
    """The definition, run by hand on open_clip's own modules: x[:, 1:1+n] = p_i before block i (i >= 1)."""
    text = backbones["open_clip"].text
    model = backbones["open_clip"].extra["model"]
    torch.manual_seed(0)
    prompt = DeepTextPrompt(text, CLASSES, n_ctx=2, depth=2, ctx_init="a photo of a")
    ids = text.tokenize([f"a photo of a {c}." for c in CLASSES])
    with torch.no_grad():
        x = model.token_embedding(ids)
        x[:, 1:3] = prompt.context.ctx
        x = x + model.positional_embedding
        for index, block in enumerate(model.transformer.resblocks):
            if index == 1:
                x = torch.cat([x[:, :1], prompt.deep[0].expand(len(CLASSES), -1, -1), x[:, 3:]], dim=1)
            x = block(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)[torch.arange(len(CLASSES)), ids.argmax(dim=-1)] @ model.text_projection
        expected = torch.nn.functional.normalize(x, dim=-1)
        torch.testing.assert_close(prompt(text), expected, atol=1e-5, rtol=0)


def test_official_init_learns_the_first_words_and_keeps_the_rest(backbones):
    text = backbones["open_clip"].text
    assert split_init_words(text, "a photo of a", 2) == ("a photo", "of a")
    assert split_init_words(text, "a photo of a", 4) == ("a photo of a", "")
    prompt = DeepTextPrompt(text, CLASSES, n_ctx=2, depth=2, ctx_init="a photo of a")
    expected = text.embed_tokens(text.tokenize(["a photo"]))[0, 1:3]
    torch.testing.assert_close(prompt.context.ctx.detach(), expected)
    # the tokenised prompt is "a photo of a <class>." with the first two slots learned
    ids = text.tokenize([f"a photo of a {CLASSES[0]}."])[0, : prompt.context.token_ids.shape[1]]
    assert torch.equal(prompt.context.token_ids[0, 3:], ids[3:])
    assert prompt.deep.shape == (1, 2, text.width)
    assert 0.01 < float(prompt.deep.detach().std()) < 0.04  # N(0, 0.02)
    with pytest.raises(ConfigError, match="n_ctx"):
        DeepTextPrompt(text, CLASSES, n_ctx=5, depth=2, ctx_init="a photo of a")


def test_depth_beyond_the_tower_prompts_every_layer(backbones):
    text = backbones["open_clip"].text
    prompt = DeepTextPrompt(text, CLASSES, n_ctx=2, depth=9)
    assert prompt.depth == text.num_layers and prompt.deep.shape[0] == text.num_layers - 1
    with pytest.raises(ConfigError, match="at least 1"):
        DeepTextPrompt(text, CLASSES, n_ctx=2, depth=0)


@pytest.mark.parametrize("name", ["open_clip", hf_param("hf_clip")])
def test_class_chunks_give_the_same_features_and_gradients(backbones, name):
    text = backbones[name].text
    classes = [f"thing {i}" for i in range(9)]
    torch.manual_seed(0)
    prompt = DeepTextPrompt(text, classes, n_ctx=2, depth=2)
    results = []
    for chunk in (2, 256):
        prompt.zero_grad()
        features = prompt(text, chunk=chunk)
        (features * torch.linspace(-1, 1, features.numel()).view_as(features)).sum().backward()
        results.append((features.detach(), prompt.deep.grad.clone(), prompt.context.ctx.grad.clone()))
    for chunked, whole in zip(results[0], results[1]):
        torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)


def saved_bytes(prompt: DeepTextPrompt, text, memory_mb: float) -> int:
    """Bytes autograd keeps for backward outside checkpointed regions, for one forward of all classes."""
    prompt.context.memory_mb = memory_mb
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        prompt(text).sum()
    return total


def test_memory_for_many_classes_is_bounded_by_the_budget(backbones):
    """Over the memory budget, what backward keeps grows by the feature rows only (a few floats per class, the
    rest is recomputed); within it every activation stays (nothing is recomputed)."""
    text = backbones["open_clip"].text
    sizes = {}
    for count in (32, 512):
        prompt = DeepTextPrompt(text, [f"thing {i}" for i in range(count)], n_ctx=2, depth=2)
        sizes[count] = (saved_bytes(prompt, text, memory_mb=0.25), saved_bytes(prompt, text, memory_mb=4096))
    per_class_chunked = (sizes[512][0] - sizes[32][0]) / 480
    per_class_whole = (sizes[512][1] - sizes[32][1]) / 480
    assert per_class_chunked <= 4 * text.feature_dim * 4  # a handful of [D] float rows per class
    assert per_class_whole > 20 * per_class_chunked  # without chunking the activations of every layer stay
