"""TrainConfig: every knob of the single training loop, validated where it is set."""
from __future__ import annotations

import os
from dataclasses import dataclass

from vlprompt.core.config import ValidatedConfig, check_choice, option
from vlprompt.core.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "constant")
PRECISIONS = ("fp32", "bf16")
AUGMENTS = ("none", "flip", "crop_flip", "rrc_flip", "resize_crop_flip")
WARMUP_TYPES = ("linear", "constant")
LR_UPDATES = ("step", "epoch")
COSINE_SPANS = ("after_warmup", "all_epochs")
SELECTIONS = ("last", "best_val")


@dataclass
class TrainConfig(ValidatedConfig):
    """Every knob of the single training loop; ranges and choices are field metadata (checked on construction)."""

    epochs: int = option(20, help="passes over the training split (0: save the initial state, train nothing)",
                         range=(0, None))
    batch_size: int = option(32, help="examples per optimizer step on each process (before grad_accum)",
                             range=(1, None))
    lr: float = option(2e-3, help="peak learning rate (per 256 examples when scale_lr_by_batch)", range=(0.0, None))
    optimizer: str = option("sgd", help="the optimizer", choices=OPTIMIZERS)
    momentum: float = option(0.9, help="SGD momentum", range=(0.0, 1.0))
    adam_eps: float = option(1e-8, help="AdamW's epsilon", range=(0.0, None))
    weight_decay: float = option(5e-4, help="decoupled (AdamW) or L2 (SGD) weight decay", range=(0.0, None))
    scheduler: str = option("cosine", help="learning-rate schedule after warm-up", choices=SCHEDULERS)
    warmup_epochs: float = option(1.0, help="epochs of learning-rate warm-up (fractions allowed)", range=(0.0, None))
    warmup_start_factor: float = option(
        0.01, help="linear warm-up starts at this fraction of lr", range=(0.0, 1.0)
    )
    warmup_type: str = option(
        "linear", choices=WARMUP_TYPES,
        help=("'linear': from warmup_start_factor*lr up to lr; 'constant': warmup_lr throughout the warm-up "
              "(Dassl's WARMUP_TYPE constant / WARMUP_CONS_LR, used by CoOp, CoCoOp, ProGrad, KgCoOp)"),
    )
    warmup_lr: float = option(1e-5, help="the learning rate of a constant warm-up", range=(0.0, None))
    lr_update: str = option(
        "step", choices=LR_UPDATES,
        help=("'step': the lr moves every optimizer step; 'epoch': it is set once per epoch, as the Dassl and VPT "
              "trainers step their schedulers at each epoch's end"),
    )
    cosine_span: str = option(
        "after_warmup", choices=COSINE_SPANS,
        help=("cosine decay over the epochs after warm-up (VPT), or over all epochs counted from the end of "
              "warm-up (Dassl's CosineAnnealingLR(T_max=MAX_EPOCH) behind its warm-up: the last epoch stays above 0)"),
    )
    scale_lr_by_batch: bool = option(
        False, help="the lr/256*batch rule: lr is the rate for a global batch of 256 and is scaled linearly"
    )
    grad_accum: int = option(1, help="micro-batches accumulated into one optimizer step", range=(1, None))
    max_grad_norm: float | None = option(None, help="clip the gradient norm to this value (unset: no clipping)",
                                         range=(0.0, None))
    precision: str = option("fp32", help="compute precision of the forward pass (bf16 autocast)", choices=PRECISIONS)
    seed: int = option(1, help="seed of initialisation, data order and augmentation")
    augment: str = option("flip", help="training augmentation of images", choices=AUGMENTS)
    feature_views: int = option(
        1, help="frozen-feature methods: augmented views cached per image (1 = exact features, no augmentation)",
        range=(1, None),
    )
    eval_batch_size: int = option(256, help="examples per evaluation batch", range=(1, None))
    device: str = option("auto", help="auto, cpu, cuda or cuda:N (mps is refused)")
    num_workers: int | None = option(
        None, range=(0, None),
        help=("processes decoding and augmenting images (0 = the training process; unset = min(8, CPU count)); "
              "results do not depend on it: each image's augmentation is seeded by (seed, epoch, index)"),
    )
    select: str = option(
        "last", choices=SELECTIONS,
        help="model selection on the validation split only (never on test): keep the last or the best-val epoch",
    )
    val_every: int = option(1, help="validate every N epochs (and after the last)", range=(1, None))
    log_every: int = option(10, help="log the loss every N optimizer steps", range=(1, None))
    checkpoint_every: int = option(
        0, help="write the resume state every N optimizer steps (0 = only at epoch ends)", range=(0, None)
    )
    resume: bool = option(True, help="resume an interrupted run from its resume state")
    progress: bool = option(True, help="show a progress bar when stderr is a terminal")
    tensorboard: bool = option(
        False, help="TensorBoard event files under <out>/tensorboard beside metrics.jsonl (needs vlprompt[tensorboard])"
    )
    cache_dir: str | None = option(None, help="folder of the frozen-feature cache (unset: no disk cache)")
    deterministic: bool = option(False, help=(
        "deterministic kernels: torch.use_deterministic_algorithms(True), CUBLAS_WORKSPACE_CONFIG=:4096:8 and "
        "cuDNN's deterministic mode without benchmarking, so that the same seed on the same GPU gives bit-identical "
        "results; costs speed on GPU only (no cuDNN autotuning, slower deterministic kernels for scatter/index-add "
        "backwards), changes nothing on CPU; an op without a deterministic implementation raises"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.device.split(":")[0] == "mps":
            raise ConfigError(
                "train.device = 'mps' (Apple GPUs) is not supported: vlprompt's bf16 autocast, its generators' "
                "resume state and its distributed paths are written and tested for CPU and CUDA only. Use "
                "device=cpu on a Mac."
            )
        check_choice("TrainConfig", "device", self.device.split(":")[0], ("auto", "cpu", "cuda"))

    def resolved_num_workers(self) -> int:
        return min(8, os.cpu_count() or 1) if self.num_workers is None else self.num_workers

    def effective_lr(self, world_size: int = 1) -> float:
        if not self.scale_lr_by_batch:
            return self.lr
        return self.lr * self.batch_size * self.grad_accum * world_size / 256.0
