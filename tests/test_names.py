"""Class names and context init words as the official CoOp-family code reads them ('_' -> ' ', words vs tokens)."""
from __future__ import annotations

import open_clip
import pytest
import torch
from test_formats_trees import coop_pets

import vlprompt.methods.coop  # noqa: F401
from vlprompt.backbones.tiny import tiny_open_clip
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import LabelSpace
from vlprompt.data.registry import load_dataset
from vlprompt.methods.base import create_method


@pytest.fixture(scope="module")
def clip():
    return tiny_open_clip(seed=0)


def _pets_tree(root, names):
    entries = {
        split: [[f"{names[c]}/{split}_{i}.jpg", c, names[c]] for c in range(len(names)) for i in range(n)]
        for split, n in (("train", 2), ("val", 1), ("test", 1))
    }
    return coop_pets(root, entries)


def test_underscored_coop_names_give_the_spaced_names_prompt_token_ids(clip, tmp_path):
    raw = ["american_bulldog", "Apply_Eye_Makeup"]
    _pets_tree(tmp_path, raw)
    task = load_dataset("coop:OxfordPets", str(tmp_path))
    assert task.labels.classnames == ["american bulldog", "Apply Eye Makeup"]
    assert task.meta["raw_classnames"] == raw
    assert task.train.sources[0] == "american_bulldog/train_0.jpg"  # files keep their raw names
    from_tree = create_method("coop", clip, task.labels, n_ctx=4)
    spaced = create_method("coop", clip, LabelSpace(["american bulldog", "Apply Eye Makeup"]), n_ctx=4)
    assert torch.equal(from_tree.prompt.token_ids, spaced.prompt.token_ids)
    zero_shot = create_method("zeroshot", clip, task.labels)
    expected = open_clip.tokenize(["a photo of a american bulldog, a type of pet."])
    assert torch.equal(clip.text.tokenize([task.labels.templates[0].format(task.labels.classnames[0])]), expected)
    assert zero_shot.labels.classnames[0] == "american bulldog"


def test_imagefolder_names_are_cleaned_and_files_keep_raw_names(tmp_path):
    from test_formats_trees import write_image

    for split in ("train", "test"):
        for name in ("red_fox", "snow_leopard"):
            write_image(tmp_path / split / name / "a.jpg")
    task = load_dataset("imagefolder", str(tmp_path))
    assert task.labels.classnames == ["red fox", "snow leopard"]
    assert task.train.sources[0] == "train/red_fox/a.jpg"


def test_ctx_init_underscores_are_spaces(clip):
    space = LabelSpace(["dog", "cat"])
    a = create_method("coop", clip, space, ctx_init="a_photo_of_a")
    b = create_method("coop", clip, space, ctx_init="a photo of a")
    assert a.prompt.n_ctx == b.prompt.n_ctx == 4
    assert torch.equal(a.prompt.ctx, b.prompt.ctx) and torch.equal(a.prompt.token_ids, b.prompt.token_ids)


def test_ctx_init_counts_words_and_keeps_extra_tokens_as_text(clip):
    """'pet,' is two tokens: official CoOp learns 8 slots (8 words) from the first 8 tokens; the 9th token ('a')
    stays fixed text before the class name, so at init the prompt is exactly the written sentence."""
    words = "a type of pet, a photo of a"
    assert len(words.split(" ")) == 8
    space = LabelSpace(["dog", "sea lion"])
    coop = create_method("coop", clip, space, ctx_init=words).eval()
    assert coop.prompt.n_ctx == 8
    ids = open_clip.tokenize([words])
    with torch.no_grad():
        torch.testing.assert_close(coop.prompt.ctx, clip.text.embed_tokens(ids)[0, 1:9].float())
        expected = torch.nn.functional.normalize(
            clip.text(open_clip.tokenize([f"{words} {c}." for c in space.classnames])), dim=-1
        )
        torch.testing.assert_close(coop.class_features(), expected, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="class_position='end'"):
        create_method("coop", clip, space, ctx_init=words, class_position="middle")


def test_prograd_starts_with_template_words_right_aligned_after_zeros(clip):
    space = LabelSpace(["dog", "cat"], ["a photo of a {}."])
    prograd = create_method("prograd", clip, space)
    ctx = prograd.prompt.ctx.detach()
    assert ctx.shape[0] == 16
    assert torch.count_nonzero(ctx[:12]) == 0
    words = clip.text.embed_tokens(open_clip.tokenize(["a photo of a"]))[0, 1:5].float()
    torch.testing.assert_close(ctx[12:], words)
    with pytest.raises(ConfigError, match="n_ctx = 2"):
        create_method("prograd", clip, space, n_ctx=2)


def test_kgcoop_default_start_is_the_four_tokens_of_a_photo_of_a(clip):
    kgcoop = create_method("kgcoop", clip, LabelSpace(["dog", "cat"]))
    assert kgcoop.config.n_ctx == 4 and kgcoop.config.ctx_init == "a photo of a"
    words = clip.text.embed_tokens(open_clip.tokenize(["a photo of a"]))[0, 1:5].float()
    torch.testing.assert_close(kgcoop.prompt.ctx.detach(), words)
