"""File names of a prompt artifact (a run folder is one); those a run folder already names come from run_dir."""
from __future__ import annotations

from vlprompt.artifacts.run_dir import (
    PROMPTS_META_NAME as CONFIG_NAME,  # method, config, backbone spec + hash, labels
)
from vlprompt.artifacts.run_dir import PROMPTS_NAME as WEIGHTS_NAME  # the trained tensors only
from vlprompt.artifacts.run_dir import RESULTS_NAME  # the run's result records, read by the card

LEGACY_META_NAME = "prompts.json"  # what vlprompt 0.1 run folders hold instead of CONFIG_NAME; still read
CARD_NAME = "README.md"  # generated model card
CLASSIFIER_WEIGHTS_NAME = "classifier.safetensors"  # `vlprompt export --format classifier`
CLASSIFIER_META_NAME = "classifier.json"

FORMAT_NAME = "vlprompt-prompt"
FORMAT_VERSION = 1

__all__ = [
    "CARD_NAME", "CLASSIFIER_META_NAME", "CLASSIFIER_WEIGHTS_NAME", "CONFIG_NAME", "FORMAT_NAME", "FORMAT_VERSION",
    "LEGACY_META_NAME", "RESULTS_NAME", "WEIGHTS_NAME",
]
