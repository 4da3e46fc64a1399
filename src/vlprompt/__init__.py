"""vlprompt: prompt learning on frozen vision and vision-language transformers.

Public API: backbones by name, methods by name, the single Trainer, prompt-only checkpoints, registries,
and every run's results as a pandas DataFrame (load_results).
"""
from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "create_backbone": "vlprompt.backbones.registry",
    "list_backbones": "vlprompt.backbones.registry",
    "create_method": "vlprompt.methods",
    "list_methods": "vlprompt.methods",
    "load_dataset": "vlprompt.data.registry",
    "list_datasets": "vlprompt.data.registry",
    "LabelSpace": "vlprompt.data.base",
    "TaskData": "vlprompt.data.base",
    "Trainer": "vlprompt.train",
    "TrainConfig": "vlprompt.train",
    "evaluate": "vlprompt.eval.tasks",
    "save_prompts": "vlprompt.artifacts.checkpoint",
    "load_prompts": "vlprompt.artifacts.checkpoint",
    "RunConfig": "vlprompt.experiment",
    "run_experiment": "vlprompt.experiment",
    "seed_everything": "vlprompt.core.seeding",
    "load_results": "vlprompt.analysis.results",
    "save_pretrained": "vlprompt.artifacts.pretrained",
    "from_pretrained": "vlprompt.artifacts.pretrained",
    "MultiTaskPredictor": "vlprompt.serve.serving",
}

__all__ = [  # noqa: RUF022  (grouped as in _EXPORTS)
    "__version__", "create_backbone", "list_backbones", "create_method", "list_methods", "load_dataset",
    "list_datasets", "LabelSpace", "TaskData", "Trainer", "TrainConfig", "evaluate", "save_prompts",
    "load_prompts", "RunConfig", "run_experiment", "seed_everything", "load_results", "save_pretrained",
    "from_pretrained", "MultiTaskPredictor",
]


def __getattr__(name: str):
    """Import on first use, so `vlprompt --version` and `import vlprompt` stay fast."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vlprompt' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
