"""Trainer callbacks: the protocol's events in order, NMI logging as a callback (metrics identical to before
it moved out of VPT/SPT), the TensorBoard callback and its optional extra."""
from __future__ import annotations

import json
import sys

import pytest
from nmi_run import GOLDEN, tiny_nmi_run  # pytest puts tests/ on sys.path
from test_trainer import make_task

from vlprompt.analysis.nmi import NMICallback, NMIOptions
from vlprompt.analysis.plots import plot_nmi, read_nmi
from vlprompt.backbones.tiny import tiny_timm_vit
from vlprompt.core.errors import ConfigError, MissingExtraError, VlpromptError
from vlprompt.core.seeding import seed_everything
from vlprompt.experiment import run_config_from_dict
from vlprompt.methods import create_method
from vlprompt.sweep import load_sweep_config, plan_sweep
from vlprompt.sweep.config import packaged_sweeps_dir
from vlprompt.train import Callback, TrainConfig, Trainer

SWEEPS = packaged_sweeps_dir()


class Recorder(Callback):
    """Every event with its arguments and the trainer's own step/epoch counters at that moment."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_fit_start(self, trainer, task):
        self.events.append(("fit_start", task.name, trainer.step))

    def on_step_end(self, trainer, step):
        self.events.append(("step_end", step, trainer.step, trainer.epoch))

    def on_log(self, trainer, record):
        self.events.append(("log", record["step"], record["epoch"], sorted(set(record) - {"step", "epoch"})))

    def on_eval(self, trainer, epoch, accuracy):
        assert accuracy == trainer.history[-1]["val_accuracy"]
        self.events.append(("eval", epoch, trainer.step))

    def on_epoch_end(self, trainer, epoch):
        self.events.append(("epoch_end", epoch, trainer.step))

    def on_fit_end(self, trainer, result):
        self.events.append(("fit_end", result.steps))


def _fit(callbacks=(), out_dir=None, **train):
    seed_everything(0)
    task = make_task(n_per_class=2, classes=2)  # 4 images: 2 steps of 2 per epoch
    method = create_method("linear", tiny_timm_vit(seed=0), task.labels)
    config = TrainConfig(epochs=2, batch_size=2, lr=0.1, log_every=1, progress=False, device="cpu",
                         num_workers=0, **train)
    trainer = Trainer(method, config, out_dir=out_dir, callbacks=list(callbacks))
    return trainer, trainer.fit(task)


def test_a_user_callback_gets_every_event_in_order_with_the_right_numbers():
    recorder = Recorder()
    _, result = _fit([recorder])
    loss = ["loss", "lr"]
    assert recorder.events == [
        ("fit_start", "synthetic", 0),
        ("step_end", 1, 1, 0), ("log", 1, 0, loss),
        ("step_end", 2, 2, 0), ("log", 2, 0, loss),
        ("log", 2, 0, ["val_accuracy"]), ("eval", 0, 2), ("epoch_end", 0, 2),
        ("step_end", 3, 3, 1), ("log", 3, 1, loss),
        ("step_end", 4, 4, 1), ("log", 4, 1, loss),
        ("log", 4, 1, ["val_accuracy"]), ("eval", 1, 4), ("epoch_end", 1, 4),
        ("fit_end", 4),
    ]
    assert result.steps == 4


def test_callbacks_are_checked_against_the_protocol():
    class Structural:  # follows the protocol without subclassing it
        def __init__(self):
            self.steps = []

        def on_fit_start(self, trainer, task): ...
        def on_step_end(self, trainer, step):
            self.steps.append(step)

        def on_log(self, trainer, record): ...
        def on_eval(self, trainer, epoch, accuracy): ...
        def on_epoch_end(self, trainer, epoch): ...
        def on_fit_end(self, trainer, result): ...

    structural = Structural()
    _fit([structural])
    assert structural.steps == [1, 2, 3, 4]

    class StepsOnly:
        def on_step_end(self, trainer, step): ...

    method = create_method("linear", tiny_timm_vit(seed=0), make_task().labels)
    with pytest.raises(ConfigError, match=r"callbacks\[1\] \(StepsOnly\).*on_fit_start, on_log, on_eval"):
        Trainer(method, TrainConfig(), callbacks=[Recorder(), StepsOnly()])


def test_nmi_records_identical_to_before_the_move(tmp_path):
    """metrics.jsonl of the same tiny SPT-deep run, captured while NMI logging lived in VPT/SPT."""
    before = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]
    after = tiny_nmi_run(tmp_path)
    assert [list(r) for r in after] == [list(r) for r in before]  # same records, same keys, same order
    assert sum("nmi/mean" in r for r in after) == 5  # step 0 (after SPT's initialisation), then steps 1-4
    for new, old in zip(after, before):
        assert new["step"] == old["step"] and new["epoch"] == old["epoch"]
        # Bit-identical where captured; a tolerance far below the step-to-step change for other CPUs.
        assert new == pytest.approx(old, rel=1e-6, abs=1e-12)

    saved = json.loads((tmp_path / "config.json").read_text())["run"]
    assert saved["nmi"] == {"every": 1, "images": 3, "normalization": "sqrt"}
    assert "nmi_every" not in saved["method_options"] and saved["method_options"]["num_tokens"] == 2
    assert run_config_from_dict(saved).as_dict()["nmi"] == saved["nmi"]  # the saved config reloads (vlprompt eval)

    curves = read_nmi(tmp_path)  # what the report plots
    assert sorted(curves) == [0, 1] and [step for step, _ in curves[0]] == [0, 1, 2, 3, 4]
    png = plot_nmi({"spt-deep": [curves]}, "NMI", tmp_path / "nmi.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nmi_options_are_a_typed_run_level_section():
    base = {"method": "vpt-deep", "dataset": "world-size"}
    config = run_config_from_dict({**base, "method_options": {"num_tokens": 3}, "nmi": {"every": "5"}})
    assert config.method_options.num_tokens == 3
    assert config.nmi == NMIOptions(every=5, images=16, normalization="min") and config.nmi.enabled
    assert config.as_dict()["nmi"] == {"every": 5, "images": 16, "normalization": "min"}
    off = run_config_from_dict({**base, "nmi": {"every": 0}})
    assert not off.nmi.enabled and off.as_dict()["nmi"] == {}
    with pytest.raises(ConfigError, match="nmi.normalization = 'max'"):
        run_config_from_dict({**base, "nmi": {"every": 2, "normalization": "max"}})
    with pytest.raises(ConfigError, match="run.nmi: unknown field 'evry'"):
        run_config_from_dict({**base, "nmi": {"evry": 2}})
    # NMI logging is no method option (0.x had nmi_* keys in method_options; no remapping is kept)
    with pytest.raises(ConfigError, match="method 'vpt-deep': unknown field 'nmi_every'"):
        run_config_from_dict({**base, "method_options": {"nmi_every": 2}})


def test_sweep_configs_keep_their_nmi_keys():
    for name, every in (("world.yaml", 10), ("world_small.yaml", 5), ("world_quick.yaml", 2)):
        specs = [s for s in plan_sweep(load_sweep_config(SWEEPS / name)) if s.run["method"].startswith("vpt")]
        assert specs and all(run_config_from_dict(s.run).nmi.every == every for s in specs), name


def test_nmi_callback_needs_visual_prompts():
    with pytest.raises(ConfigError, match="method 'linear' has no visual prompt tokens"):
        _fit([NMICallback(every=1)])
    with pytest.raises(ConfigError, match="NMICallback.every"):
        NMICallback(every=0)


def test_tensorboard_event_file_holds_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result = _fit(out_dir=tmp_path, tensorboard=True)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "val_accuracy"} <= set(events.Tags()["scalars"])
    for tag in ("loss", "val_accuracy"):
        logged = [(r["step"], r[tag]) for r in result.history if tag in r]
        scalars = events.Scalars(tag)
        assert [e.step for e in scalars] == [step for step, _ in logged]
        # TensorBoard stores float32.
        assert [e.value for e in scalars] == pytest.approx([value for _, value in logged], rel=1e-6)
    assert len(events.Scalars("loss")) == 4


def test_tensorboard_from_the_command_line(tmp_path):
    from vlprompt.cli import main

    out = tmp_path / "run"
    assert main(["train", "method=linear", "backbone=tiny:timm_vit", "dataset=world-size", "shots=1",
                 "dataset_options={train_per_class: 1, val_per_class: 1, test_per_class: 1}",
                 "train.epochs=1",
                 "train.tensorboard=true", "train.progress=false", "train.device=cpu", f"--out={out}"]) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_missing_extra_and_missing_folder_are_clear(tmp_path, monkeypatch):
    method = create_method("linear", tiny_timm_vit(seed=0), make_task().labels)
    with pytest.raises(VlpromptError, match="output folder"):
        Trainer(method, TrainConfig(tensorboard=True))
    # As if tensorboard were not installed: its import fails, and torch's wrapper must be imported afresh.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    for name in [m for m in sys.modules if m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    expected = r"tensorboard is not installed.*pip install 'vlprompt\[tensorboard\]'"
    with pytest.raises(MissingExtraError, match=expected):
        Trainer(method, TrainConfig(tensorboard=True), out_dir=tmp_path)
