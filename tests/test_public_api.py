"""Every public entry point works as the FIRST call in a fresh interpreter (registries fill themselves)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Each snippet is the first thing a fresh process does with vlprompt; it prints OK when it worked.
FIRST_CALLS = {
    "run_demo": "from vlprompt.demo import run_demo\n"
    "r = run_demo(OUT, methods=['zeroshot'])\nassert r[0]['method'] == 'zeroshot'",
    "METHODS.get": "from vlprompt.methods.base import METHODS\nassert METHODS.get('coop').method_name == 'coop'",
    "list_methods": "import vlprompt\nassert 'kgcoop' in vlprompt.list_methods()",
    "create_method": "import vlprompt\nb = vlprompt.create_backbone('world:clip')\n"
    "m = vlprompt.create_method('coop', b, vlprompt.LabelSpace(['red', 'blue']), n_ctx=2)\nassert m.method_name == 'coop'",
    "RunConfig": "import vlprompt\nassert vlprompt.RunConfig(method='vpt-deep').method == 'vpt-deep'",
    "load_dataset": "import vlprompt\n"
    "t = vlprompt.load_dataset('world-colour', train_per_class=1, val_per_class=0, test_per_class=1)\n"
    "assert t.labels.num_classes == 8",
    "DATASETS": "from vlprompt.data.registry import DATASETS\nassert 'world-object' in DATASETS",
    "list_datasets": "import vlprompt\nassert 'coop:OxfordPets' in vlprompt.list_datasets()",
    "BACKBONES": "from vlprompt.backbones.registry import BACKBONES\nassert 'world:clip' in BACKBONES",
    "list_backbones": "import vlprompt\nassert 'world:mae' in vlprompt.list_backbones()",
}


@pytest.mark.parametrize("name", sorted(FIRST_CALLS))
def test_public_entry_point_works_first_in_a_fresh_interpreter(name, tmp_path):
    code = f"OUT = {str(tmp_path / 'out')!r}\n{FIRST_CALLS[name]}\nprint('OK')"
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-2000:]


def test_every_exported_name_resolves():
    import vlprompt

    for name in vlprompt.__all__:
        assert getattr(vlprompt, name) is not None
