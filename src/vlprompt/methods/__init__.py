"""Every method module; importing them fills the METHODS registry."""
from __future__ import annotations

import importlib

from vlprompt.methods.base import METHODS, PromptMethod, create_method, register_method

_MODULES = (
    "zeroshot", "linear", "vpt", "spt", "finetune", "coop", "cocoop", "prograd", "kgcoop", "mocoop",
    "ivlp", "maple", "promptsrc", "clip_lora", "tip_adapter", "clap", "peft", "bottleneck", "ssf", "vit_lora",
    "sidetune", "mlp_head", "prompt_bias",
)


def import_all() -> None:
    for name in _MODULES:
        module = f"vlprompt.methods.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


def list_methods() -> list[str]:
    import_all()
    return METHODS.names()


__all__ = ["METHODS", "PromptMethod", "create_method", "import_all", "list_methods", "register_method"]
