"""File names of a prompt artifact (a run folder is one): kept in one place so a run-folder type can own them."""
from __future__ import annotations

WEIGHTS_NAME = "prompts.safetensors"  # the trained tensors only
CONFIG_NAME = "prompt_config.json"  # method, its config, backbone spec + weights hash, labels, checksum
LEGACY_META_NAME = "prompts.json"  # written by vlprompt <= 0.1.0 run folders; still read
CARD_NAME = "README.md"  # generated model card
RESULTS_NAME = "results.json"  # the run's result records (written by experiment.py), read by the card
CLASSIFIER_WEIGHTS_NAME = "classifier.safetensors"  # `vlprompt export --format classifier`
CLASSIFIER_META_NAME = "classifier.json"

FORMAT_NAME = "vlprompt-prompt"
FORMAT_VERSION = 1
