"""Dataset names -> loaders. A loader takes (root=None, **options) and returns a TaskData."""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from vlprompt.core.registry import Registry
from vlprompt.data.base import TaskData

# Modules whose import registers datasets; imported lazily so `import vlprompt` stays light.
_PROVIDERS = ("vlprompt.data.world.tasks", "vlprompt.data.world.segmentation", "vlprompt.data.formats.catalog", "vlprompt.data.formats.seg_catalog", "vlprompt.data.vtab_stages")


def register_dataset(name: str):
    return DATASETS.register(name)


def _import_providers() -> None:
    for module in _PROVIDERS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


DATASETS: Registry[Callable[..., TaskData]] = Registry("dataset", populate=_import_providers)


def load_dataset(name: str, root: str | None = None, **options: Any) -> TaskData:
    """Load by name; the task's meta records how (``meta["source"]``), so a run folder can name its data."""
    _import_providers()
    task = DATASETS.get(name)(root=root, **options)
    return dataclasses.replace(task, meta={**task.meta, "source": {"dataset": name, "root": root,
                                                                   "options": dict(options)}})


def list_datasets() -> list[str]:
    _import_providers()
    return DATASETS.names()
