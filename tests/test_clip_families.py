"""Beyond OpenAI CLIP: EVA-CLIP, SigLIP and SigLIP 2 (open_clip towers built on timm) and timm's EVA / SigLIP ViTs.

Tiny random-init versions of the real configs (backbones/tiny.py) check that the adapters equal the libraries' own
forwards, that prompt tokens get no rope rotation on EVA, that the MAP readout reads patches with or without
prompts, that SigLIP's bidirectional text tower takes the plain path with its own tokenizer layout and logit bias,
and that every registered method runs on each family or refuses with the reason the README's table gives.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch

from vlprompt.backbones import tiny
from vlprompt.core.errors import VlpromptError
from vlprompt.data.base import LabelSpace
from vlprompt.losses import sigmoid_loss
from vlprompt.methods import list_methods
from vlprompt.methods.base import create_method
from vlprompt.prompts.deep_vision import layered_vision_forward
from vlprompt.prompts.text_encoding import encode_texts, exact_fast_paths
from vlprompt.prompts.visual import VisualPrompts, prompted_forward

FAMILIES = ("eva", "siglip", "siglip2")
CLASSES = ["red circle", "green square", "blue triangle"]
LABELS = LabelSpace(
    CLASSES, ["a photo of a {}.", "a drawing of a {}."], {"photo": ["a photo of a {}."], "drawing": ["a drawing of a {}."]}
)


@functools.cache
def family(name: str):
    builders = {
        "eva": tiny.tiny_open_clip_eva,
        "siglip": lambda: tiny.tiny_open_clip_siglip(version=1),
        "siglip2": lambda: tiny.tiny_open_clip_siglip(version=2),
        "timm_eva": tiny.tiny_timm_eva,
        "timm_siglip": tiny.tiny_timm_siglip,
    }
    return builders[name]().freeze()


def images(count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def library_image_features(name: str, x: torch.Tensor) -> torch.Tensor:
    model = family(name).extra["model"]
    if name.startswith("timm"):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    return model.encode_image(x)


# ----- image towers -----
@pytest.mark.parametrize("name", FAMILIES + ("timm_eva", "timm_siglip"))
def test_tower_and_zero_effect_prompts_equal_the_library_forward(name):
    visual = family(name).visual
    x = images()
    with torch.no_grad():
        expected = library_image_features(name, x)
        torch.testing.assert_close(visual(x), expected, rtol=0, atol=0)
        for depth in (1, visual.num_blocks):
            empty = VisualPrompts(0, visual.width, depth=depth, patch_size=visual.patch_size)
            torch.testing.assert_close(prompted_forward(visual, empty, x), expected, rtol=0, atol=0)
        layered = [torch.zeros(0, visual.width)] * visual.num_blocks
        torch.testing.assert_close(layered_vision_forward(visual, layered, x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["eva", "timm_eva"])
def test_eva_prompts_get_no_rotation_as_timm_treats_prefix_tokens(name):
    """Our block with p prompts equals timm's own block told that the prompts are prefix tokens (which timm's
    EvaAttention leaves unrotated), fed timm's own rope table."""
    visual = family(name).visual
    model = visual.inner.model if hasattr(visual, "inner") else visual.model
    prompts = torch.randn(2, 3, visual.width, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        tokens = visual.embed(images())
        tokens = torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], dim=1)
        ours = visual.block(0, tokens)
        block = model.blocks[0]
        block.attn.num_prefix_tokens += 3
        try:
            theirs = block(tokens, rope=model.rope.get_embed())
        finally:
            block.attn.num_prefix_tokens -= 3
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_timm_eva_block_alone_rejects_tokens_beyond_the_rope_grid():
    """What the adapter works around: timm rotates every token after the prefix by the grid's table."""
    model = family("timm_eva").visual.model
    with torch.no_grad():
        tokens, rope = model._pos_embed(model.patch_embed(images()))
        tokens = torch.cat([tokens[:, :1], torch.zeros(2, 3, tokens.shape[-1]), tokens[:, 1:]], dim=1)
        with pytest.raises(RuntimeError, match="must match"):
            model.blocks[0](tokens, rope=rope)


@pytest.mark.parametrize("name", ["siglip", "timm_siglip"])
def test_map_readout_reads_patches_with_or_without_prompts(name):
    visual = family(name).visual
    model = visual.model
    assert visual.pooling == "map" and visual.num_prefix_tokens == 0
    prompts = VisualPrompts(4, visual.width, patch_size=visual.patch_size).eval()
    with torch.no_grad():
        tokens = visual.embed(images())
        tokens = prompts.insert(tokens, 0, 0)
        for index in range(visual.num_blocks):
            tokens = visual.block(index, tokens)
        without = visual.finalize(tokens, num_prompts=4, pool_prompts=False)
        with_prompts = visual.finalize(tokens, num_prompts=4, pool_prompts=True)
        # excluded: timm's own head over the patch tokens alone; included: its pool over every token
        torch.testing.assert_close(without, model.forward_head(model.norm(tokens[:, 4:]), pre_logits=True))
        torch.testing.assert_close(with_prompts, model.forward_head(model.norm(tokens), pre_logits=True))
    assert not torch.allclose(without, with_prompts)


@pytest.mark.parametrize("name", ["eva", "timm_eva"])
def test_eva_block_sites_and_lora_projections(name):
    visual = family(name).visual
    sites = visual.block_sites(0)
    # EVA-CLIP: separate q/k/v (no packed qkv), gated SwiGLU MLP (no single input projection)
    assert not sites.has("attn_qkv") and not sites.has("mlp_in")
    assert all(sites.has(s) for s in ("norm_attn", "attn", "attn_out", "norm_mlp", "mlp", "mlp_out"))
    projections = visual.attention_projections(0)
    assert projections.separate == {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}
    assert projections.get(projections.separate["q"]) is sites.get("attn").q_proj


# ----- text towers -----
@pytest.mark.parametrize(
    "name, causal, pooling, start", [("eva", True, "argmax", 1), ("siglip", False, "last", 0), ("siglip2", False, "last", 1)]
)
def test_text_tower_declares_its_shape_and_equals_encode_text(name, causal, pooling, start):
    backbone = family(name)
    text = backbone.text
    assert (text.causal, text.pooling, text.start_tokens) == (causal, pooling, start)
    assert exact_fast_paths(text) is causal
    expected_length = 77 if name == "eva" else tiny.TINY_SIGLIP_CONTEXT_LENGTH
    assert text.context_length == expected_length
    ids = text.tokenize(["a photo of a red circle.", "blue"])
    with torch.no_grad():
        torch.testing.assert_close(text(ids), backbone.extra["model"].encode_text(ids), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_coop_context_from_words_equals_the_hand_written_prompt(name):
    """Context initialised from 'a photo of a' sits where the tokenizer puts those words (after CLIP's SOS, at
    slot 0 for SigLIP's tokenizer), so CoOp's class features equal the encoded template."""
    backbone = family(name)
    method = create_method("coop", backbone, LABELS, ctx_init="a photo of a")
    with torch.no_grad():
        learned = method.class_features()
        hand = encode_texts(backbone.text, [f"a photo of a {c}." for c in CLASSES])
    torch.testing.assert_close(learned, hand, rtol=1e-5, atol=1e-5)


def test_logit_bias_enters_clip_logits_and_only_the_sigmoid_loss_sees_it():
    backbone = family("siglip")
    assert backbone.logit_bias == -10.0
    method = create_method("zeroshot", backbone, LABELS)
    features = torch.nn.functional.normalize(torch.randn(4, backbone.visual.feature_dim), dim=-1)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        logits = method({"features": features, "label": labels})["logits"]
        cos = features @ method.hand_features().t()
    torch.testing.assert_close(logits, backbone.logit_scale * cos - 10.0)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(ce(logits, labels), ce(logits + 10.0, labels))
    assert not torch.allclose(sigmoid_loss(logits, labels), sigmoid_loss(logits + 10.0, labels))


def test_sigmoid_loss_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    expected = -(torch.log(torch.sigmoid(torch.tensor(2.0))) + torch.log(torch.sigmoid(torch.tensor(1.0)))
                 + torch.log(torch.sigmoid(torch.tensor(-0.5))))
    torch.testing.assert_close(sigmoid_loss(logits, torch.tensor([0])), expected)


@pytest.mark.parametrize("method_name", ["coop", "maple"])
def test_sigmoid_loss_option_trains_with_the_models_objective(method_name):
    backbone = family("siglip")
    method = create_method(method_name, backbone, LABELS, loss="sigmoid").train()
    outputs = method({"image": images(3), "features": None, "label": torch.tensor([0, 1, 2])} if method_name == "maple"
                     else {"features": torch.randn(3, backbone.visual.feature_dim), "label": torch.tensor([0, 1, 2])})
    torch.testing.assert_close(outputs["loss"], sigmoid_loss(outputs["logits"], torch.tensor([0, 1, 2])))


def test_hf_tokenizer_loads_from_a_folder_and_never_downloads():
    from vlprompt.backbones.open_clip_load import open_clip_tokenizer

    folder = tiny.tiny_sentencepiece_folder("t5")
    tokenizer = open_clip_tokenizer("ViT-B-16-SigLIP", "open_clip:ViT-B-16-SigLIP@webli", folder)
    assert tokenizer.context_length == 64
    assert tokenizer(["a photo"])[0, :3].tolist() == [tokenizer.tokenizer.convert_tokens_to_ids("▁a"),
                                                      tokenizer.tokenizer.convert_tokens_to_ids("▁photo"), 1]
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("timm/ViT-B-16-SigLIP2", "tokenizer_config.json"), str):
        pytest.skip("the SigLIP 2 tokenizer is in this machine's HF cache")
    with pytest.raises(VlpromptError, match="tokenizer=/path/to/folder"):
        open_clip_tokenizer("ViT-B-16-SigLIP2", "open_clip:ViT-B-16-SigLIP2@webli")


# ----- every method on every family: runs, or refuses with the README's reason -----
# Options that keep a step small; PromptSRC's teacher otherwise encodes CLIP's 60 templates.
OPTIONS = {"partial-k": {"k": 1}, "mocoop": {"top_k": 1}, "promptsrc": {"templates": "task"},
           "sidetune": {"side_model": "test_efficientnet", "side_pretrained": False}}
# (family, method) -> the refusal's reason, as the README table states it, and a phrase of the error.
NO_CLS = ("no class token (MAP readout)", "no 'class_token' place")
REFUSALS = {("siglip", "cls-tune"): NO_CLS, ("siglip2", "cls-tune"): NO_CLS}


def family_table() -> str:
    """The README's method x family table, derived from REFUSALS (a cell says 'runs' or why not)."""
    header = "| method | EVA-CLIP (EVA02-B-16) | SigLIP (ViT-B-16-SigLIP) | SigLIP 2 (ViT-B-16-SigLIP2) |"
    rows = [header, "|---|---|---|---|"]
    for method in list_methods():
        cells = [REFUSALS.get((f, method), ("runs", ""))[0] for f in FAMILIES]
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def test_readme_table_is_the_battery_outcome():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert family_table() in readme, "README's method x backbone-family table is out of date:\n" + family_table()


@pytest.mark.parametrize("method_name", list_methods())
@pytest.mark.parametrize("name", FAMILIES)
def test_every_method_runs_or_refuses_with_the_tables_reason(name, method_name):
    backbone = family(name)
    batch = {"image": images(4), "label": torch.tensor([0, 1, 2, 0])}
    if (name, method_name) in REFUSALS:
        with pytest.raises(VlpromptError, match=re.escape(REFUSALS[(name, method_name)][1])):
            create_method(method_name, backbone, LABELS, **OPTIONS.get(method_name, {}))
        return
    torch.manual_seed(0)
    method = create_method(method_name, backbone, LABELS, **OPTIONS.get(method_name, {})).train()
    outputs = method(batch)
    assert outputs["logits"].shape == (4, len(CLASSES))
    assert torch.isfinite(outputs["logits"]).all()
    if outputs["loss"] is not None and outputs["loss"].requires_grad:
        outputs["loss"].backward()
        grads = [p.grad for p in method.trainable_parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("encoders", ["text", "vision", "both"])
def test_clip_lora_on_siglip_reaches_both_towers_and_merges_exactly(encoders):
    """SigLIP's timm image tower takes LoRA on its packed qkv (and proj) through ``attention_projections``."""
    torch.manual_seed(0)
    method = create_method("clip-lora", family("siglip"), LABELS, encoders=encoders, params=["q", "k", "v", "o"]).train()
    if encoders != "text":
        attn = method.visual.attention_projections(0).owner
        assert type(attn.qkv).__name__ == "LoRAPackedLinear" and type(attn.proj).__name__ == "LoRALinear"
    for parameter in method.lora_parameters():  # B starts at 0: give the branches a non-zero delta
        torch.nn.init.normal_(parameter, std=0.1)
    batch = {"image": images(2), "features": torch.randn(2, 32), "label": torch.tensor([0, 1])}
    outputs = method(batch)
    assert torch.isfinite(outputs["loss"])
    method.eval()
    with torch.no_grad():
        unmerged = method(batch)["logits"]
        method.set_merged(True)
        merged = method(batch)["logits"]
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


# ----- the real names -----
@pytest.mark.parametrize("arch", ["vit_base_patch16_siglip_224", "eva02_base_patch16_clip_224"])
def test_timm_names_load_and_equal_timm(arch):
    """``timm:<arch>`` for the SigLIP ViT (MAP head, refused before) and EVA-02 CLIP, at tiny sizes by kwargs."""
    from vlprompt.backbones.registry import create_backbone

    small = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    if arch.startswith("eva"):
        small["ref_feat_shape"] = (4, 4)
    backbone = create_backbone(f"timm:{arch}", random_init=True, **small)
    model = backbone.extra["model"]
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(images()), pre_logits=True)
        torch.testing.assert_close(backbone.visual(images()), expected, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["EVA02-B-16", "ViT-B-16-SigLIP"])
def test_open_clip_full_size_random_init_equals_open_clip(arch):
    """The real open_clip configs at full size (random weights; the SigLIP tokenizer from a local folder)."""
    from vlprompt.backbones.registry import create_backbone

    options = {"tokenizer": tiny.tiny_sentencepiece_folder("t5")} if "SigLIP" in arch else {}
    backbone = create_backbone(f"open_clip:{arch}@none", **options)
    model = backbone.extra["model"]
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ids = backbone.text.tokenize(["a photo of a red circle."])
    with torch.no_grad():
        torch.testing.assert_close(backbone.visual(x), model.encode_image(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(backbone.text(ids), model.encode_text(ids), rtol=1e-5, atol=1e-5)
        prompts = VisualPrompts(0, backbone.visual.width, depth=backbone.visual.num_blocks, patch_size=16)
        torch.testing.assert_close(prompted_forward(backbone.visual, prompts, x), model.encode_image(x))
    assert backbone.text.causal is (arch == "EVA02-B-16")
    assert backbone.logit_bias == (-10.0 if "SigLIP" in arch else 0.0)


def test_timm_model_with_its_own_projection_head_and_attention_pool_refusal():
    """open_clip ``TimmModel`` configs with ``timm_proj: linear`` add a head after timm's readout: it is applied
    after the adapter's finalize; open_clip's own attention pools (ConvNet towers) are refused."""
    from collections import OrderedDict

    from torch import nn

    from vlprompt.backbones.open_clip_timm import open_clip_timm_tower

    torch.manual_seed(0)
    tower = tiny._open_clip_timm_tower(tiny._tiny_siglip_trunk())
    tower.head = nn.Sequential(OrderedDict(proj=nn.Linear(32, 16)))
    adapted = open_clip_timm_tower(tower, 16)
    assert adapted.feature_dim == 16 and adapted.pooling == "map"
    with torch.no_grad():
        torch.testing.assert_close(adapted(images()), tower(images()), rtol=0, atol=0)
    tower.head = nn.Sequential(OrderedDict(pool=nn.Identity()))
    with pytest.raises(VlpromptError, match="attention pool"):
        open_clip_timm_tower(tower, 16)
