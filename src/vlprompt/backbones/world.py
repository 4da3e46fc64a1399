"""The two tiny backbones shipped for the offline world, built from the real libraries' own classes.

- ``world:clip`` is an open_clip ``CLIP`` from a custom model config (ViT image tower, causal text tower,
  open_clip's own BPE tokenizer), so it runs through the same adapter code as a user's open_clip checkpoint.
- ``world:mae`` is a timm ``VisionTransformer`` (mean-pooled, as MAE ViTs are) loaded through timm's own
  pretrained-file path, like any local timm checkpoint.

Both are stored in fp16. The CLIP's token embedding is stored sparsely: only the rows of tokens that occur in
the world's captions and templates were ever trained, the other 49k rows are zero once loaded (an unknown word
reads as an empty embedding). ``export_open_clip_dir`` writes the dense form that ``open_clip`` itself loads
with ``local-dir:``. The scripts that trained them: scripts/pretrain_world_clip.py and scripts/pretrain_world_mae.py.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlprompt.core.errors import VlpromptError

ASSETS = Path(str(resources.files("vlprompt"))) / "assets" / "world"
CLIP_DIR = ASSETS / "clip"
MAE_DIR = ASSETS / "mae"
CLIP_CONFIG_FILE = "open_clip_config.json"
CLIP_WEIGHTS_FILE = "weights.safetensors"
MAE_CONFIG_FILE = "timm_config.json"
MAE_WEIGHTS_FILE = "weights.safetensors"

WORLD_MEAN = (0.45, 0.45, 0.45)
WORLD_STD = (0.25, 0.25, 0.25)


def world_images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images [N,H,W,3] -> normalised float [N,3,H,W], as the world backbones were trained (pretraining
    scripts work on rendered arrays directly; the library path goes through the backbone's preprocess config)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(WORLD_MEAN).view(1, 3, 1, 1)) / torch.tensor(WORLD_STD).view(1, 3, 1, 1)

# The architecture the training script builds (also written beside the weights, which is what loading reads).
CLIP_CONFIG: dict[str, Any] = {
    "model_cfg": {
        "embed_dim": 96,
        "quick_gelu": False,
        "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 96, "layers": 4, "head_width": 48},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 96, "heads": 2, "layers": 3},
    },
    "preprocess_cfg": {
        "mean": list(WORLD_MEAN),
        "std": list(WORLD_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}
MAE_CONFIG: dict[str, Any] = {
    "architecture": "vit_tiny_patch16_224",
    "model_kwargs": {
        "img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 2,
        "global_pool": "avg", "fc_norm": False, "num_classes": 0,
    },
    "pretrained_cfg": {
        "input_size": [3, 32, 32], "mean": list(WORLD_MEAN), "std": list(WORLD_STD),
        "interpolation": "bicubic", "crop_pct": 1.0, "num_classes": 0,
    },
}
SPARSE_ROWS = "token_embedding.rows"
SPARSE_VALUES = "token_embedding.values"


def _missing(path: Path, script: str) -> VlpromptError:
    return VlpromptError(
        f"The world backbone file {path} is missing. It ships with the package; reinstall vlprompt, or "
        f"retrain it with 'python scripts/{script}'."
    )


# ----- CLIP -----
def build_world_clip(config: dict[str, Any] | None = None):
    """The world CLIP architecture with random weights (open_clip ``CLIP``)."""
    from open_clip.model import CLIP

    cfg = dict((config or CLIP_CONFIG)["model_cfg"])
    return CLIP(**cfg)


def world_clip_tokenizer(config: dict[str, Any] | None = None):
    """open_clip's own BPE tokenizer at the world CLIP's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=(config or CLIP_CONFIG)["model_cfg"]["text_cfg"]["context_length"])


def save_world_clip(model: torch.nn.Module, directory: Path, used_token_ids: list[int], meta: dict) -> None:
    """fp16 weights with a sparse token embedding (only ``used_token_ids`` rows) plus the config and ``meta``."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    embedding = state.pop("token_embedding.weight")
    rows = torch.tensor(sorted(set(used_token_ids)), dtype=torch.int64)
    state[SPARSE_ROWS] = rows
    state[SPARSE_VALUES] = embedding[rows].contiguous()
    save_file(state, str(directory / CLIP_WEIGHTS_FILE))
    (directory / CLIP_CONFIG_FILE).write_text(json.dumps({**CLIP_CONFIG, "world_meta": meta}, indent=2) + "\n")


def _dense_clip_state(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    weights = directory / CLIP_WEIGHTS_FILE
    if not weights.is_file():
        raise _missing(weights, "pretrain_world_clip.py")
    config = json.loads((directory / CLIP_CONFIG_FILE).read_text())
    state = load_file(str(weights))
    rows, values = state.pop(SPARSE_ROWS), state.pop(SPARSE_VALUES)
    text_cfg = config["model_cfg"]["text_cfg"]
    embedding = torch.zeros(text_cfg["vocab_size"], text_cfg["width"], dtype=values.dtype)
    embedding[rows] = values
    state["token_embedding.weight"] = embedding
    return config, {k: v.float() for k, v in state.items()}


def load_world_clip(directory: Path | None = None):
    """(open_clip CLIP in eval mode, tokenizer, config dict) of the shipped world CLIP."""
    config, state = _dense_clip_state(Path(directory or CLIP_DIR))
    model = build_world_clip(config)
    model.load_state_dict(state)
    return model.eval(), world_clip_tokenizer(config), config


def export_open_clip_dir(target: Path, directory: Path | None = None) -> Path:
    """Write the world CLIP as a folder ``open_clip.create_model_and_transforms('local-dir:<target>')`` loads."""
    config, state = _dense_clip_state(Path(directory or CLIP_DIR))
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target / "open_clip_model.safetensors"))
    plain = {"model_cfg": config["model_cfg"], "preprocess_cfg": config["preprocess_cfg"]}
    (target / "open_clip_config.json").write_text(json.dumps(plain, indent=2) + "\n")
    return target


# ----- MAE ViT -----
def build_world_mae(config: dict[str, Any] | None = None):
    """The world MAE ViT architecture with random weights (timm ``VisionTransformer``)."""
    import timm

    cfg = config or MAE_CONFIG
    return timm.create_model(cfg["architecture"], pretrained=False, **cfg["model_kwargs"])


def save_world_mae(model: torch.nn.Module, directory: Path, meta: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / MAE_WEIGHTS_FILE))
    (directory / MAE_CONFIG_FILE).write_text(json.dumps({**MAE_CONFIG, "world_meta": meta}, indent=2) + "\n")


def load_world_mae(directory: Path | None = None):
    """The shipped MAE ViT through timm's own pretrained-file loading, in eval mode."""
    import timm

    directory = Path(directory or MAE_DIR)
    weights = directory / MAE_WEIGHTS_FILE
    if not weights.is_file():
        raise _missing(weights, "pretrain_world_mae.py")
    config = json.loads((directory / MAE_CONFIG_FILE).read_text())
    overlay = {**config["pretrained_cfg"], "file": str(weights)}
    model = timm.create_model(
        config["architecture"], pretrained=True, pretrained_cfg_overlay=overlay, **config["model_kwargs"]
    )
    return model.eval()


# ----- registered names -----
def _register() -> None:
    from vlprompt.backbones.base import Backbone, PreprocessConfig
    from vlprompt.backbones.registry import register_backbone

    @register_backbone("world:clip")
    def world_clip(path: str | None = None) -> Backbone:
        """The shipped world CLIP (or one retrained into ``path``) through the open_clip adapter."""
        from vlprompt.backbones.open_clip import wrap_open_clip

        model, tokenizer, config = load_world_clip(Path(path) if path else None)
        pre = config["preprocess_cfg"]
        preprocess = PreprocessConfig(
            image_size=config["model_cfg"]["vision_cfg"]["image_size"],
            mean=tuple(pre["mean"]),
            std=tuple(pre["std"]),
            interpolation=pre["interpolation"],
        )
        return wrap_open_clip(model, tokenizer, preprocess, f"world:clip@{path}" if path else "world:clip")

    @register_backbone("world:mae")
    def world_mae(path: str | None = None) -> Backbone:
        """The shipped world MAE ViT (mean-pooled readout) through the timm adapter."""
        from vlprompt.backbones.timm_vit import wrap_timm_vit

        model = load_world_mae(Path(path) if path else None)
        return wrap_timm_vit(model, f"world:mae@{path}" if path else "world:mae", kind="mae")


_register()
