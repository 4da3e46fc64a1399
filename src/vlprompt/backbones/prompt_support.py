"""What visual prompting a tower carries, declared by its adapter (``VisionTower.prompt_support``).

VPT and SPT read these declarations instead of checking adapter classes; the names are the official VPT config's
(KMnP/vpt ``src/configs/config.py``: MODEL.PROMPT.LOCATION, VIT_POOL_TYPE).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from vlprompt.core.errors import VlpromptError

# VPT's prompt locations, named as the official config (MODEL.PROMPT.LOCATION) names them.
PROMPT_LOCATIONS = ("prepend", "add", "add-1", "below", "pad", "prepend-pixel")
# VPT's readouts (MODEL.PROMPT.VIT_POOL_TYPE): the backbone's own pooling, or the mean of the final patch tokens,
# of the final prompt tokens, or of both (everything but the prefix).
PROMPT_READOUTS = ("original", "img_pool", "prompt_pool", "imgprompt_pool")


@dataclass(frozen=True)
class PromptSupport:
    """Which visual prompting a tower's seams carry, declared by its adapter; VPT and SPT read this instead of
    checking adapter classes.

    ``kind`` says how prompts travel: ``"sequence"`` (a plain ViT: prompt tokens ride the token sequence after the
    prefix tokens through embed -> block(i) -> finalize), ``"windows"`` (Swin: prompt tokens join every attention
    window of every block and are widened by each patch merging; ``block_widths`` differ per stage) or
    ``"pixels"`` (a ConvNet: only the image itself can be prompted). ``locations`` are the official location names
    the tower supports, ``deep_locations`` those that also work with a fresh set per block, ``readouts`` the
    official readouts it supports; ``refusals`` says, per unsupported location or readout, why not.
    """

    kind: str
    block_widths: tuple[int, ...]
    locations: tuple[str, ...]
    deep_locations: tuple[str, ...] = ()
    readouts: tuple[str, ...] = ("original",)
    refusals: dict[str, str] = field(default_factory=dict)

    def refuse(self, option: str, value: str, where: str) -> VlpromptError:
        reason = self.refusals.get(value, "the adapter's seams do not carry it")
        return VlpromptError(f"{where}: {option} '{value}' does not apply to this backbone: {reason}")


@dataclass(frozen=True)
class InputStem:
    """A tower's first convolution on the pixels, for VPT's ``below`` prompts (extra input channels through a
    retrained copy of it). ``norm`` is the normalisation the official code retrains with it (a ResNet's stem
    BatchNorm), ``style`` the official file whose init applies: "vit" (vit_ablations.py) or "resnet" (resnet.py)."""

    conv: nn.Conv2d
    norm: nn.Module | None
    style: str

__all__ = ["PROMPT_LOCATIONS", "PROMPT_READOUTS", "InputStem", "PromptSupport"]
