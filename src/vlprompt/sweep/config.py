"""The sweep config schema: a YAML grid validated into dataclasses, every unknown key named with its file."""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from vlprompt.core.config import build_config, check_choice, deep_merge, load_yaml_mapping, option
from vlprompt.core.errors import ConfigError, VlpromptError
from vlprompt.experiment import PROTOCOLS
from vlprompt.methods import import_all, list_methods
from vlprompt.methods.base import METHODS
from vlprompt.train.config import TrainConfig

SWEEP_PROTOCOLS = (*PROTOCOLS, "vtab")
# RunConfig fields a grid may vary (the others are set by the sweep's own axes).
GRID_ROOTS = ("backbone", "train", "method_options", "dataset_options")


@dataclass
class MethodEntry:
    """One method of the grid, with its own options, training overrides and hyper-parameter grid."""

    name: str = option(help="registered method name")
    method_options: dict = option(help="the method's options for every run of it", default_factory=dict)
    train: dict = option(help="training settings over the sweep's train section", default_factory=dict)
    grid: dict = option(help="this method's own grid: dotted run field -> values", default_factory=dict)
    nmi: dict = option(help="NMI logging of this method's runs (the run config's nmi section)", default_factory=dict)
    label: str | None = option(
        None, help="how the method is named in report tables (default: the method name, plus the grid values)"
    )
    preset: str | None = option(
        None, help="a paper preset (vlprompt.presets) each run is built from; its epochs_by_shots follow the shots"
    )


@dataclass
class DatasetEntry:
    """One dataset of the grid; ``protocols``/``shots``/``seeds`` override the sweep's for this dataset."""

    dataset: str = option(help="registered dataset name")
    root: str | None = option(None, help="the dataset's data folder (default: the dataset's own location)")
    options: dict = option(help="options of the dataset's loader", default_factory=dict)
    protocols: list[str] | None = option(None, help="protocols for this dataset (default: the sweep's)")
    shots: list[int] | None = option(None, help="shots for this dataset (default: the sweep's)")
    seeds: list[int] | None = option(None, help="seeds for this dataset (default: the sweep's)")
    targets: list = option(
        help="domain-shift targets sharing the classes, each {dataset, root, options}", default_factory=list
    )


@dataclass
class VtabConfig:
    """VTAB-1k stages: the seed of the selection runs and the seeds of the final runs."""

    select_seed: int = option(1, help="seed of the hyper-parameter selection runs")
    final_seeds: list[int] = option(help="seeds of the final runs", default_factory=lambda: [1, 2, 3, 4, 5])


@dataclass
class SweepConfig:
    """A grid of runs. ``all`` in ``methods`` stands for every registered method not listed with its own
    settings. ``grid`` maps a dotted RunConfig field (``train.lr``, ``train.weight_decay``,
    ``method_options.num_tokens``, ``backbone``...) to its values; a ``method_options`` key applies only to
    the methods whose config has that field. The lr/256*batch rule is ``train: {scale_lr_by_batch: true}``."""

    name: str = option("sweep", help="the sweep's name (its report title)")
    backbone: str = option("world:clip", help="backbone id of every run")
    methods: list = option(help="method names or {name, method_options, train, grid, ...}; 'all' for every "
                                "registered method", default_factory=list)
    datasets: list = option(help="dataset names or {dataset, root, options, ...}", default_factory=list)
    protocols: list[str] = option(help="evaluation protocols", default_factory=lambda: ["fewshot"])
    shots: list[int] = option(help="shots per class of the runs", default_factory=lambda: [16])
    seeds: list[int] = option(help="seeds of the runs", default_factory=lambda: [1, 2, 3])
    train: dict = option(help="training settings of every run", default_factory=dict)
    grid: dict = option(help="dotted run field (train.lr, method_options.num_tokens, ...) -> values",
                        default_factory=dict)
    vtab: dict = option(help="VTAB-1k stages (VtabConfig: select_seed, final_seeds)", default_factory=dict)
    imports: list[str] = option(
        help="modules imported before any run (in every worker): plugins that register datasets or backbones",
        default_factory=list,
    )
    feature_cache: bool = option(
        True, help=("share frozen image features between runs (<out>/features) unless a run sets train.cache_dir; "
                    "the cache is keyed by backbone weights and data")
    )

    def __post_init__(self) -> None:
        for module in self.imports:
            import_plugin(module, "sweep.imports")
        import_all()
        if isinstance(self.methods, str):
            self.methods = [self.methods]
        if "all" in self.methods:
            # 'all' stands for every registered method that the list does not name with its own settings.
            named = {m["name"] if isinstance(m, dict) else m for m in self.methods if m != "all"}
            index = self.methods.index("all")
            rest = [m for m in self.methods[index + 1 :] if m != "all"]
            self.methods = self.methods[:index] + [m for m in list_methods() if m not in named] + rest
        if not self.methods:
            raise ConfigError(
                "sweep.methods is empty: list method names (or 'all' for every registered method)."
            )
        if not self.datasets:
            raise ConfigError(
                "sweep.datasets is empty: list at least one dataset (a name or {dataset: ..., ...})."
            )
        self.method_entries = [_method_entry(m, i) for i, m in enumerate(self.methods)]
        self.dataset_entries = [_dataset_entry(d, i) for i, d in enumerate(self.datasets)]
        self.vtab_config = build_config(VtabConfig, self.vtab, where="sweep.vtab")
        for protocol in self.protocols:
            check_choice("sweep", "protocols", protocol, SWEEP_PROTOCOLS)
        for i, entry in enumerate(self.dataset_entries):
            for protocol in entry.protocols or []:
                check_choice(f"sweep.datasets[{i}]", "protocols", protocol, SWEEP_PROTOCOLS)
        _check_grid(self.grid, "sweep.grid")
        for i, entry in enumerate(self.method_entries):
            _check_grid(entry.grid, f"sweep.methods[{i}].grid")
        build_config(TrainConfig, {k: v for k, v in self.train.items() if k != "seed"}, where="sweep.train")


def import_plugin(module: str, where: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise ConfigError(
            f"{where}: cannot import module '{module}' ({error}). Check the name and that it is on "
            "PYTHONPATH."
        ) from None


def _method_entry(value: Any, index: int) -> MethodEntry:
    where = f"sweep.methods[{index}]"
    entry = build_config(
        MethodEntry, {"name": value} if isinstance(value, str) else _mapping(value, where), where
    )
    METHODS.get(entry.name)
    return entry


def _dataset_entry(value: Any, index: int) -> DatasetEntry:
    where = f"sweep.datasets[{index}]"
    return build_config(
        DatasetEntry, {"dataset": value} if isinstance(value, str) else _mapping(value, where), where
    )


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a name or a mapping, not {value!r}.")
    return value


def _check_grid(grid: Any, where: str) -> None:
    if not isinstance(grid, dict):
        raise ConfigError(f"{where} must map dotted RunConfig fields (e.g. train.lr) to lists of values.")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, values in grid.items():
        root, _, rest = str(key).partition(".")
        if root not in GRID_ROOTS:
            raise ConfigError(
                f"{where}: unknown key '{key}'; a grid key starts with one of {list(GRID_ROOTS)} "
                "(e.g. train.lr, method_options.num_tokens)."
            )
        if root == "backbone" and rest:
            raise ConfigError(f"{where}: '{key}': backbone takes no sub-field; write 'backbone'.")
        if root != "backbone" and not rest:
            raise ConfigError(f"{where}: '{key}' needs a sub-field, e.g. {root}.lr.")
        if root == "train" and rest.split(".")[0] not in train_fields:
            raise ConfigError(f"{where}: unknown key '{key}'; '{rest}' is not a TrainConfig field.")
        if root == "train" and rest == "seed":
            raise ConfigError(f"{where}: '{key}': seeds are the sweep's own axis; use seeds: [...].")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: '{key}' must be a non-empty list of values, not {values!r}.")


def packaged_sweeps_dir() -> Path:
    """The sweep configs shipped inside the package (vlprompt/configs/sweeps)."""
    return Path(str(resources.files("vlprompt"))) / "configs" / "sweeps"


def list_sweeps() -> list[str]:
    """Names of the packaged sweep configs (``vlprompt sweep NAME``)."""
    return sorted(p.stem for p in packaged_sweeps_dir().glob("*.yaml"))


def sweep_config_path(name_or_path: str | Path) -> Path:
    """An existing file as given, else the packaged sweep of that name (``world_quick`` or ``world_quick.yaml``);
    neither is an error listing the packaged names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = packaged_sweeps_dir() / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent == Path(".") and packaged.is_file():
        return packaged
    raise ConfigError(
        f"Sweep config '{name_or_path}' is neither a file nor a packaged sweep. Packaged sweeps: "
        f"{', '.join(list_sweeps())} (e.g. 'vlprompt sweep world_quick --out runs/world_quick'); or give the path "
        "of your own YAML file."
    )


def load_sweep_config(path: str | Path, overrides: dict | None = None) -> SweepConfig:
    """Read a sweep YAML, a file path or a packaged name (``world_quick``); any invalid or unknown key is an error
    naming the key and the file.

    ``overrides`` (e.g. ``{"train": {"epochs": 2}}`` from ``train.epochs=2`` on the command line) are merged
    into the file's mapping, nested mappings key by key."""
    path = sweep_config_path(path)
    values = load_yaml_mapping(path, "Sweep config", "name:, methods:, datasets:, ...")
    values = deep_merge(values, overrides or {})
    try:
        return build_config(SweepConfig, values, where="sweep")
    except VlpromptError as error:
        raise type(error)(f"In sweep config '{path}': {error}") from None

