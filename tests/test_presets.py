"""Paper presets: each one's values against the official config they were read from, and the preset mechanics."""
from __future__ import annotations

import json

import pytest

from vlprompt.cli import main
from vlprompt.core.errors import ConfigError, VlpromptError
from vlprompt.experiment import run_config_from_dict
from vlprompt.methods import METHODS
from vlprompt.presets import apply_preset, epochs_for, list_presets, load_preset
from vlprompt.sweep import plan_sweep
from vlprompt.sweep.protocols import protocol_sweep

DASSL = {"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4, "scheduler": "cosine",
         "warmup_epochs": 1, "warmup_type": "constant", "warmup_lr": 1e-5, "lr_update": "epoch",
         "cosine_span": "all_epochs", "augment": "rrc_flip"}
VPT = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128, "epochs": 100,
       "scheduler": "cosine", "warmup_epochs": 10, "warmup_type": "linear", "warmup_start_factor": 0.0,
       "lr_update": "epoch", "cosine_span": "after_warmup", "scale_lr_by_batch": True,
       "augment": "resize_crop_flip"}
VPT_WD = [0.01, 0.001, 0.0001, 0.0]
VTAB_LR = [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05]  # KMnP/vpt tune_vtab.py, train_type "prompt"
FGVC_LR = [5.0, 2.5, 1.0, 50.0, 25.0, 10.0, 0.5, 0.25, 0.1]  # KMnP/vpt tune_fgvc.py prompt_main

# name: (method, method_options, train, epochs_by_shots, grid)
EXPECTED = {
    # KaiyangZhou/CoOp configs/trainers/CoOp/vit_b16{,_ep100,_ep50}.yaml + scripts/coop/main.sh (N_CTX 16, end)
    "coop-paper": ("coop", {"n_ctx": 16, "ctx_init": "", "class_specific": False, "class_position": "end"},
                   {**DASSL, "batch_size": 32, "epochs": 200}, {1: 50, 2: 50, 4: 100, 8: 100, 16: 200}, None),
    # KaiyangZhou/CoOp configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml
    "cocoop-paper": ("cocoop", {"n_ctx": 4, "ctx_init": "a photo of a"},
                     {**DASSL, "batch_size": 1, "epochs": 10}, None, None),
    # BeierZhu/Prompt-align ProGrad.public/configs/trainers/ProGrad/rn50{,_ep100,_ep50}.yaml, scripts/prograd.sh,
    # README (1 shot ep50, 2-4 ep100, 8-16 rn50 = 200), trainers/prograd.py (right-aligned template init)
    "prograd-paper": ("prograd", {"n_ctx": 16, "ctx_init": "template", "ctx_init_align": "right", "lam": 1.0,
                                  "temperature": 1.0},
                      {**DASSL, "batch_size": 32, "epochs": 200}, {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}, None),
    # htyao89/KgCoOp KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml, scripts/base2new_train.sh (W 8.0)
    "kgcoop-paper": ("kgcoop", {"n_ctx": 4, "ctx_init": "a photo of a", "weight": 8.0},
                     {**DASSL, "batch_size": 128, "epochs": 100}, None, None),
    # KMnP/vpt configs/base-prompt.yaml + src/solver/lr_scheduler.py + tune_fgvc.py / tune_vtab.py
    "vpt-shallow-paper": ("vpt-shallow", {"num_tokens": 5}, VPT, None,
                          {"train.lr": FGVC_LR, "train.weight_decay": VPT_WD}),
    "vpt-deep-paper": ("vpt-deep", {"num_tokens": 5}, VPT, None, {"train.lr": FGVC_LR, "train.weight_decay": VPT_WD}),
    "vpt-shallow-vtab": ("vpt-shallow", {"num_tokens": 5}, VPT, None,
                         {"train.lr": VTAB_LR, "train.weight_decay": VPT_WD}),
    "vpt-deep-vtab": ("vpt-deep", {"num_tokens": 5}, VPT, None, {"train.lr": VTAB_LR, "train.weight_decay": VPT_WD}),
    # VPT's VTAB recipe (KMnP/vpt) with SPT's k-means start; SPT's own code not verified (said in the preset)
    "spt-deep-paper": ("spt-deep", {"num_tokens": 5, "init": "kmeans"}, VPT, None,
                       {"train.lr": VTAB_LR, "train.weight_decay": VPT_WD}),
    # muzairkhattak/multimodal-prompt-learning configs/trainers/{IVLP,MaPLe}/*.yaml (Dassl, constant warm-up 1e-5)
    "ivlp-paper": ("ivlp", {"n_ctx_text": 2, "n_ctx_vision": 2, "depth_text": 12, "depth_vision": 12,
                            "ctx_init": "a photo of a"}, {**DASSL, "lr": 0.0035, "batch_size": 4, "epochs": 5},
                   None, None),
    "maple-paper": ("maple", {"n_ctx": 2, "depth": 9, "ctx_init": "a photo of a"},
                    {**DASSL, "lr": 0.0035, "batch_size": 4, "epochs": 5}, None, None),
    "maple-dg-paper": ("maple", {"n_ctx": 2, "depth": 3, "ctx_init": "a photo of a"},
                       {**DASSL, "lr": 0.0026, "batch_size": 4, "epochs": 2}, None, None),
    # muzairkhattak/PromptSRC configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml
    "promptsrc-paper": ("promptsrc", {"n_ctx_text": 4, "n_ctx_vision": 4, "depth_text": 9, "depth_vision": 9,
                                      "ctx_init": "a photo of a", "text_loss_weight": 25, "image_loss_weight": 10,
                                      "logit_loss_weight": 1, "gpa": True, "gpa_mean": 15, "gpa_std": 1,
                                      "templates": "official"},
                        {**DASSL, "lr": 0.0025, "batch_size": 4, "epochs": 20}, None, None),
    # CoOp's Dassl optimiser (configs/trainers/CoOp/vit_b16_ep50.yaml); mixture loss weights not verified
    "mocoop-paper": ("mocoop", {"top_k": 2, "lambda_text": 5.0, "lambda_gate": 1.0, "gate_prototype": "class"},
                     {**DASSL, "batch_size": 32, "epochs": 50}, None, None),
    # dongzelian/SSF train_scripts/vit/vtab/*/train_ssf.sh (2 GPUs x 32, AdamW, warm-up from 1e-7 = 2e-5 x lr, timm cosine)
    "ssf-vtab": ("ssf", {}, {"optimizer": "adamw", "lr": 0.005, "weight_decay": 5e-5, "batch_size": 64, "epochs": 100,
                             "scheduler": "cosine", "warmup_epochs": 10, "warmup_type": "linear",
                             "warmup_start_factor": 2e-5, "lr_update": "epoch", "cosine_span": "all_epochs",
                             "augment": "none"}, None,
                 {"train.lr": [0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05], "train.weight_decay": [5e-5, 0.05]}),
    # ShoufaChen/AdaptFormer main_image.py (ffn_option parallel, ffn_num 64, scalar 0.1, init lora, LN none),
    # README image command (batch 128 x 8 GPUs, blr 0.1), util/lr_sched.py, datasets/image_datasets.py
    "adaptformer-paper": ("adaptformer", {"bottleneck": 64, "scale": 0.1, "dropout": 0.1, "branch_input": "residual"},
                          {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 1024,
                           "epochs": 100, "scheduler": "cosine", "warmup_epochs": 20, "warmup_type": "linear",
                           "warmup_start_factor": 0.0, "lr_update": "step", "cosine_span": "after_warmup",
                           "scale_lr_by_batch": True, "augment": "rrc_flip"}, None, None),
    # KMnP/vpt configs/base-linear.yaml + src/configs/config.py (MODEL.MLP_NUM) + tune_vtab.py "linear" grid
    "mlp-3-vtab": ("mlp-k", {"k": 3, "dropout": 0.1}, {**VPT, "batch_size": 1024}, None,
                   {"train.lr": VTAB_LR, "train.weight_decay": VPT_WD}),
}


def test_this_table_covers_its_presets_and_every_shipped_preset_builds():
    assert set(EXPECTED) <= set(list_presets())
    for name in list_presets():  # presets of other methods are tested against their sources in their own tests
        config = run_config_from_dict({"preset": name, "shots": 16})
        assert isinstance(config.method_options, METHODS.get(config.method).config_class)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_values_match_the_official_configs(name):
    method, options, train, by_shots, grid = EXPECTED[name]
    preset = load_preset(name)
    assert preset["method"] == method
    assert preset["method_options"] == options
    assert {key: preset["train"][key] for key in train} == train
    assert preset["train"].get("precision", "fp32") == "fp32"
    assert preset.get("epochs_by_shots") == by_shots
    assert preset.get("grid") == grid
    assert preset["description"].strip() and preset["source"]["files"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_builds_valid_run_train_and_method_configs(name):
    config = run_config_from_dict({"preset": name, "shots": 4})
    assert config.preset == name
    train = config.train_config()
    for key, value in load_preset(name)["train"].items():
        if key != "epochs" or not load_preset(name).get("epochs_by_shots"):
            assert getattr(train, key) == value
    options = config.method_options  # resolved into the method's config dataclass by the run config
    assert isinstance(options, METHODS.get(config.method).config_class)
    assert {key: getattr(options, key) for key in load_preset(name)["method_options"]} == load_preset(name)["method_options"]


def test_epochs_follow_shots_and_user_keys_beat_the_preset():
    assert [epochs_for(load_preset("coop-paper"), s) for s in (1, 2, 4, 8, 16, 0, 32)] == [50, 50, 100, 100, 200,
                                                                                         200, 200]
    values = apply_preset({"preset": "coop-paper", "shots": 2, "train": {"lr": 0.01}, "method_options": {"n_ctx": 4}})
    assert values["train"]["epochs"] == 50 and values["train"]["lr"] == 0.01
    assert values["train"]["warmup_type"] == "constant"
    assert values["method_options"] == {"n_ctx": 4, "ctx_init": "", "class_specific": False, "class_position": "end"}
    assert apply_preset({"preset": "coop-paper", "shots": 2, "train": {"epochs": 3}})["train"]["epochs"] == 3
    with pytest.raises(ConfigError, match="recipe of method 'coop'"):
        apply_preset({"preset": "coop-paper", "method": "vpt-deep"})
    with pytest.raises(VlpromptError, match="Did you mean: coop-paper"):
        apply_preset({"preset": "coop-papr"})


def test_train_with_a_preset_records_it_in_config_json(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "preset=kgcoop-paper", "dataset=world-colour", "shots=1", "train.epochs=1",
                 "train.batch_size=4", "dataset_options.train_per_class=2", "dataset_options.val_per_class=1",
                 "dataset_options.test_per_class=1", f"out={out}"])
    assert code == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["run"]["preset"] == "kgcoop-paper" and saved["run"]["method"] == "kgcoop"
    resolved = saved["train_resolved"]
    assert (resolved["epochs"], resolved["batch_size"], resolved["warmup_type"], resolved["lr_update"]) == (
        1, 4, "constant", "epoch")
    assert saved["run"]["method_options"]["ctx_init"] == "a photo of a"
    # Re-reading the saved config (vlprompt eval) gives the same run.
    assert run_config_from_dict(saved["run"]).as_dict() == saved["run"]


def test_protocol_command_takes_a_preset_and_its_grid():
    sweep = protocol_sweep("vtab", {"preset": "vpt-deep-vtab", "dataset": "vtab", "root": "/data"})
    assert sweep.methods == [{"name": "vpt-deep", "preset": "vpt-deep-vtab"}]
    assert sweep.grid == {"train.lr": VTAB_LR, "train.weight_decay": VPT_WD}


def test_protocol_runs_follow_the_preset_epochs_of_their_own_shots():
    # CoOp's official schedule (README + configs/trainers/CoOp/vit_b16_ep50/_ep100/vit_b16.yaml): 50 at 1-2 shots,
    # 100 at 4-8, 200 at 16.
    sweep = protocol_sweep("fewshot", {"preset": "coop-paper", "dataset": "world-object", "shots": "1,2,4,8,16",
                                       "seeds": 1})
    runs = [run_config_from_dict(spec.run) for spec in plan_sweep(sweep)]
    epochs = {run.shots: run.train_config().epochs for run in runs}
    assert epochs == {1: 50, 2: 50, 4: 100, 8: 100, 16: 200}
    assert {run.preset for run in runs} == {"coop-paper"}
    # A key the user gives still beats the preset in every run.
    sweep = protocol_sweep("fewshot", {"preset": "coop-paper", "dataset": "world-object", "shots": "1,16",
                                       "train": {"epochs": 3, "lr": 0.5}})
    trains = [run_config_from_dict(spec.run).train_config() for spec in plan_sweep(sweep)]
    assert {(t.epochs, t.lr, t.warmup_type) for t in trains} == {(3, 0.5, "constant")}


def test_list_presets_command(capsys):
    assert main(["list", "presets"]) == 0
    assert "coop-paper" in capsys.readouterr().out.split()


def test_official_augmentations():
    from torchvision import transforms as T

    from vlprompt.backbones.base import PreprocessConfig
    from vlprompt.data.transforms import train_transform

    config = PreprocessConfig(image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    rrc = [t for t in train_transform(config, "rrc_flip").transforms if isinstance(t, T.RandomResizedCrop)]
    assert rrc and rrc[0].scale == (0.08, 1.0)  # Dassl's INPUT.RRCROP_SCALE default
    vpt = train_transform(config, "resize_crop_flip").transforms
    assert [type(t) for t in vpt[1:4]] == [T.Resize, T.RandomCrop, T.RandomHorizontalFlip]
    assert vpt[1].size == 256 and vpt[2].size == (224, 224)  # KMnP/vpt src/data/transforms.py
