"""The package import map: which part of vlprompt may import which, held as data, checked on every module.

Every ``import`` and ``from ... import`` anywhere in a module counts, inside functions too (a lazy import is
still a dependency), and so does a string constant naming a vlprompt module (registries and lazy loaders import
by name). The root ``vlprompt/__init__.py`` is the public facade: it names every layer in strings by design and
imports nothing at import time, so only its ast imports count (it has none); other modules may import
``__version__`` from it.

The arrows point down: cli -> sweep / demo / evaluate_run / serve -> experiment -> analysis -> train -> artifacts ->
methods -> eval / prompts -> data -> backbones -> core. The one decision the layout forced: ``eval/`` (predict,
per-task-type scores, metrics, dense predict, mask outputs, predict on image files) sits BELOW train, because the
Trainer validates with it; so eval imports no method class, no Trainer and no experiment. Evaluating a finished
run folder needs the run's config (experiment.RunConfig, which holds a TrainConfig), so ``evaluate_run.py`` sits
above experiment, beside it; the protocol commands build sweeps, so they are ``sweep/protocols.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import vlprompt
from vlprompt.analysis.markdown import format_table

PACKAGE = Path(vlprompt.__file__).parent
ROOT = "vlprompt"  # the facade package itself: __version__ and the lazy public API

# package -> the packages it may import. A package is a folder under src/vlprompt or a top-level module.
ALLOWED: dict[str, set[str]] = {
    "core": set(),  # the ground floor: nothing else of vlprompt
    ROOT: set(),
    "losses": set(),  # pure functions on tensors
    "presets": {"core"},
    "backbones": {"core"},
    "data": {"core", "backbones"},  # transforms follow the backbone's declared PreprocessConfig
    "prompts": {"core", "backbones", "data"},  # text prompts read class names from data.base.LabelSpace
    "eval": {"core", "backbones", "data"},  # runs any model with .logits(); knows no method class
    "methods": {"core", "backbones", "data", "prompts", "losses", "eval"},  # eval: PromptMethod.predict_images
    "artifacts": {ROOT, "core", "backbones", "data", "methods"},  # pretrained folders rebuild their method
    "train": {"core", "data", "methods", "eval", "artifacts"},
    "analysis": {"core", "backbones", "data", "prompts", "train", "artifacts"},  # NMI is a Trainer callback
    "serve": {ROOT, "core", "methods", "eval", "artifacts"},
    "experiment": {"core", "backbones", "data", "methods", "eval", "train", "artifacts", "analysis", "presets"},
    "evaluate_run": {"core", "backbones", "data", "methods", "eval", "artifacts", "experiment"},
    "sweep": {"core", "backbones", "data", "methods", "train", "artifacts", "analysis", "presets", "experiment"},
    "demo": {"core", "data", "methods", "train", "artifacts", "analysis", "experiment"},
    "cli": {ROOT, "core", "backbones", "data", "methods", "eval", "artifacts", "analysis", "presets", "experiment",
            "evaluate_run", "sweep", "serve", "demo"},
    "__main__": {"cli"},  # python -m vlprompt
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def package_of(module: str) -> str:
    parts = module.split(".")
    return ROOT if len(parts) == 1 else parts[1]


def imports_in(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every vlprompt module that ``source`` (the text of ``module``) imports, at any depth of its syntax tree."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from vlprompt.core import distributed` imports the module vlprompt.core.distributed
            found += [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        elif isinstance(node, ast.Constant) and node.value in MODULES and node.value != ROOT and module != ROOT:
            found.append(node.value)  # a module named in a string: registries, lazy loaders, package data, loggers
    return [name for name in found if name == ROOT or name.startswith("vlprompt.")]


def imported_modules(path: Path) -> list[str]:
    return imports_in(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


def forbidden_imports(imports: dict[str, list[str]]) -> list[str]:
    """'module imports target' for every import that crosses packages against ALLOWED."""
    return [f"{name} imports {target}" for name, targets in sorted(imports.items()) for target in targets
            if package_of(target) != package_of(name) and package_of(target) not in ALLOWED.get(package_of(name), ())]


def package_graph(imports: dict[str, list[str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, targets in imports.items():
        for target in targets:
            if package_of(target) != package_of(name):
                graph.setdefault(package_of(name), set()).add(package_of(target))
    return graph


IMPORTS = {name: imported_modules(path) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in a directed graph as [a, b, ..., a], or None when it has none (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_every_package_is_in_the_map():
    unknown = sorted({package_of(name) for name in MODULES} - set(ALLOWED))
    assert unknown == [], f"add these packages to ALLOWED in tests/test_layering.py with what they may import: {unknown}"


def test_every_import_between_packages_is_allowed_by_the_map():
    forbidden = forbidden_imports(IMPORTS)
    assert forbidden == [], "imports against ALLOWED in tests/test_layering.py:\n" + "\n".join(forbidden)


def test_the_actual_package_graph_and_the_allowed_map_have_no_cycle():
    cycle = find_cycle(package_graph(IMPORTS))
    assert cycle is None, f"a package cycle: {' -> '.join(cycle or [])}"
    assert find_cycle(ALLOWED) is None, "the map itself allows a cycle"


def test_core_imports_nothing_else_of_vlprompt():
    outside = [f"{name} imports {target}" for name, targets in IMPORTS.items() if package_of(name) == "core"
               for target in targets if package_of(target) != "core"]
    assert outside == []


def test_no_library_module_imports_the_cli():
    offenders = [name for name, targets in IMPORTS.items() if package_of(name) not in ("cli", "__main__")
                 and any(package_of(target) == "cli" for target in targets)]
    assert offenders == []


def test_the_checks_fail_on_a_planted_cycle_and_a_planted_lazy_upward_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    # a real core module with one lazy upward import added inside a function
    name = "vlprompt.core.errors"
    source = MODULES[name].read_text(encoding="utf-8") + "\n\ndef _late():\n    from vlprompt.train import Trainer\n"
    planted = {**IMPORTS, name: imports_in(source, name)}
    assert forbidden_imports(planted) == ["vlprompt.core.errors imports vlprompt.train"]
    assert find_cycle(package_graph(planted)) is not None  # train imports core, so core -> train closes a cycle


def test_format_table_rounds_floats_and_leaves_missing_cells_empty():
    table = format_table([{"method": "coop", "accuracy": 0.123456}, {"method": "vpt"}], ("method", "accuracy"))
    assert table.splitlines() == [
        "| method | accuracy |",
        "|---|---|",
        "| coop | 0.1235 |",
        "| vpt |  |",
    ]
