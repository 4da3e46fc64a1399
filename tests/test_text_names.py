"""Every ImageNet class name and every name of the CoOp datasets gives a prompt, laid out as the official CoOp code.

The official PromptLearner (KaiyangZhou/CoOp, trainers/coop.py) tokenises "<X * n_ctx> <name>." with the class at
the end, counts each name's tokens alone, and for the middle / front positions cuts the first name_len tokens after
the context and moves them. The reference here rebuilds those token rows with that recipe, written as slices of
the class-at-end row, and the layout must equal them for every name and position. Six ImageNet names end in ")"
and merge with the "." into one BPE token; they must work too (they used to be refused).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import open_clip
import pytest
import torch

import vlprompt.methods  # noqa: F401
from vlprompt.backbones.tiny import tiny_open_clip
from vlprompt.data.base import LabelSpace
from vlprompt.methods import import_all
from vlprompt.methods.base import create_method
from vlprompt.prompts.text import ContextPrompt
from vlprompt.prompts.text_layout import CLASS_POSITIONS

MERGED = [
    "kite (bird of prey)", "ram (adult male sheep)", "impala (antelope)", "Mexican hairless dog (xoloitzcuintli)",
    "military hat (bearskin or shako)", "cherimoya (custard apple)",
]
N_CTX = 4


def all_names() -> list[str]:
    """open_clip's 1,000 ImageNet names and the other ten CoOp datasets' names (underscores as spaces), unique."""
    data = json.loads((Path(__file__).parent / "data" / "coop_classnames.json").read_text())
    names = list(open_clip.IMAGENET_CLASSNAMES)
    for key, listed in data.items():
        if not key.startswith("_"):
            names += [name.replace("_", " ") for name in listed]
    return list(dict.fromkeys(names))


def imagenet_1000() -> list[str]:
    """open_clip's 1,000 ImageNet names, made distinct as the CoOp file names them: open_clip lists 'missile'
    (657, 744) and 'sunglasses' (836, 837) twice, and LabelSpace refuses classes whose prompts would be identical."""
    names = list(open_clip.IMAGENET_CLASSNAMES)
    names[744], names[836] = "projectile", "sunglass"
    return names


@pytest.fixture(scope="module")
def clip():
    return tiny_open_clip(seed=0)


@pytest.fixture(scope="module")
def names():
    return all_names()


def official_rows(text, names: list[str], position: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(token rows, EOT positions) by the official recipe: class-at-end tokens, then the class span moved."""
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    tokens = text.tokenize([" ".join(["X"] * N_CTX) + " " + name + "." for name in names])
    eot = tokens.argmax(dim=-1)
    if position == "end":
        return tokens, eot
    half = N_CTX // 2 if position == "middle" else 0
    rows = []
    for row, name in zip(tokens, names):
        name_len = len(tokenizer.encode(name))
        prefix, ctx, suffix = row[:1], row[1 : 1 + N_CTX], row[1 + N_CTX :]
        rows.append(torch.cat([prefix, ctx[:half], suffix[:name_len], ctx[half:], suffix[name_len:]]))
    return torch.stack(rows), eot


def test_the_name_lists_hold_every_imagenet_class_and_the_merged_names(names):
    assert len(open_clip.IMAGENET_CLASSNAMES) == 1000
    assert set(MERGED) <= set(names)
    assert len(names) > 2000


@pytest.mark.parametrize("position", CLASS_POSITIONS)
def test_layout_equals_the_official_prompt_for_every_name(clip, names, position, caplog):
    text = clip.text
    with caplog.at_level(logging.WARNING, logger="vlprompt.prompts.text_layout"):
        prompt = ContextPrompt(text, names, n_ctx=N_CTX, position=position)
    expected, eot = official_rows(text, names, position)
    length = prompt.token_ids.shape[1]
    assert int(eot.max()) + 1 == length
    assert torch.equal(prompt.token_ids.cpu(), expected[:, :length])
    assert torch.equal(prompt.eot.cpu(), eot)
    x_id = int(text.tokenize(["X"])[0, 1])
    slots = prompt.slot.cpu()
    assert torch.equal((slots < N_CTX).sum(dim=1), torch.full((len(names),), N_CTX))
    assert bool((prompt.token_ids.cpu()[slots < N_CTX] == x_id).all())
    warned = {r.args[0] for r in caplog.records if "merges with the prompt's suffix" in r.getMessage()}
    # the merged token is a problem of the moved class span only; at the end the prompt is the official one
    assert warned == (set() if position == "end" else set(MERGED))


def test_merged_names_with_the_class_at_the_end_equal_zero_shot_clip(clip):
    """CoOp started from "a photo of a" reproduces zero-shot CLIP exactly, merged ")." token included."""
    space = LabelSpace(MERGED, ["a photo of a {}."])
    coop = create_method("coop", clip, space, ctx_init="a photo of a").eval()
    zero_shot = create_method("zeroshot", clip, space).eval()
    features = torch.randn(3, clip.text.feature_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            coop({"features": features})["logits"], zero_shot({"features": features})["logits"], atol=1e-5, rtol=0
        )


PROMPT_METHODS = [
    ("coop", {"class_position": "end"}),
    ("coop", {"class_position": "middle"}),
    ("coop", {"class_position": "front"}),
    ("cocoop", {"class_position": "middle"}),
    ("kgcoop", {}),
    ("prograd", {}),
    ("mocoop", {}),
    ("ivlp", {}),
    ("maple", {}),
    ("promptsrc", {}),
    ("zeroshot", {}),
    ("clip-lora", {}),
    ("tip-adapter", {}),
    ("clap", {}),
]


@pytest.mark.parametrize(("method", "options"), PROMPT_METHODS, ids=[f"{m}-{o}" for m, o in PROMPT_METHODS])
def test_every_prompt_method_builds_class_features_for_all_imagenet_names(clip, method, options):
    import_all()
    groups = {"photo": ["a photo of a {}."], "art": ["art of the {}."]}
    space = LabelSpace(imagenet_1000(), ["a photo of a {}."], groups)
    model = create_method(method, clip, space, **options).eval()
    generator = torch.Generator().manual_seed(0)
    size = clip.preprocess.image_size
    batch = {
        "features": torch.randn(2, clip.text.feature_dim, generator=generator),
        "image": torch.randn(2, 3, size, size, generator=generator),
        "label": torch.tensor([0, 1]),
    }
    with torch.no_grad():
        logits = model(batch)["logits"]
    assert logits.shape == (2, 1000)
    assert bool(torch.isfinite(logits).all())
