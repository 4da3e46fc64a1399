"""Every file name a run folder or a prompt artifact uses, each defined once (RunDir, checkpoint, card and export
read them from here)."""
from __future__ import annotations

CONFIG_NAME = "config.json"  # the run config (experiment.py), with its fingerprint
METRICS_NAME = "metrics.jsonl"
RESULTS_NAME = "results.json"  # the run's result records, read by the card
RESUME_NAME = "resume.safetensors"  # artifacts/resume_state.py: tensors + JSON header, no pickle
LEGACY_RESUME_NAME = "resume.pt"  # the pickle vlprompt 0.1 wrote: refused, never loaded; --restart removes it
PROMPTS_NAME = "prompts.safetensors"  # the trained tensors only
PROMPTS_META_NAME = "prompt_config.json"  # the prompt artifact's config: method, config, backbone spec + hash, labels
ERROR_NAME = "error.txt"
SPEC_NAME = "sweep.json"
LOG_NAME = "log.txt"
LOCK_NAME = ".lock"
LEGACY_META_NAME = "prompts.json"  # the prompt config vlprompt 0.1 wrote: refused with what to do, never read
CARD_NAME = "README.md"  # generated model card
CLASSIFIER_WEIGHTS_NAME = "classifier.safetensors"  # `vlprompt export --format classifier`
CLASSIFIER_META_NAME = "classifier.json"

FORMAT_NAME = "vlprompt-prompt"
FORMAT_VERSION = 1

__all__ = [
    "CARD_NAME", "CLASSIFIER_META_NAME", "CLASSIFIER_WEIGHTS_NAME", "CONFIG_NAME", "ERROR_NAME", "FORMAT_NAME",
    "FORMAT_VERSION", "LEGACY_META_NAME", "LEGACY_RESUME_NAME", "LOCK_NAME", "LOG_NAME", "METRICS_NAME",
    "PROMPTS_META_NAME", "PROMPTS_NAME", "RESULTS_NAME", "RESUME_NAME", "SPEC_NAME",
]
