"""TrainConfig: every knob of the single training loop, validated where it is set."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from vlprompt.config_utils import check_choice, check_range
from vlprompt.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "constant")
PRECISIONS = ("fp32", "bf16")
AUGMENTS = ("none", "flip", "crop_flip", "rrc_flip", "resize_crop_flip")
WARMUP_TYPES = ("linear", "constant")
LR_UPDATES = ("step", "epoch")
COSINE_SPANS = ("after_warmup", "all_epochs")
SELECTIONS = ("last", "best_val")


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    optimizer: str = "sgd"
    momentum: float = 0.9
    adam_eps: float = 1e-8
    weight_decay: float = 5e-4
    scheduler: str = "cosine"
    warmup_epochs: float = 1.0
    warmup_start_factor: float = 0.01
    # "linear": from warmup_start_factor*lr up to lr; "constant": warmup_lr throughout the warm-up (Dassl's
    # WARMUP_TYPE constant / WARMUP_CONS_LR, used by CoOp, CoCoOp, ProGrad, KgCoOp).
    warmup_type: str = "linear"
    warmup_lr: float = 1e-5
    # "step": the lr moves every optimizer step; "epoch": it is set once per epoch, as the Dassl and VPT trainers
    # step their schedulers at each epoch's end.
    lr_update: str = "step"
    # Cosine decay over the epochs after warm-up (VPT), or over all `epochs` counted from the end of warm-up
    # (Dassl's CosineAnnealingLR(T_max=MAX_EPOCH) behind its warm-up wrapper: the last epoch stays above 0).
    cosine_span: str = "after_warmup"
    # The lr/256*batch rule: when set, lr is the rate for a global batch of 256 and is scaled linearly.
    scale_lr_by_batch: bool = False
    grad_accum: int = 1
    max_grad_norm: float | None = None
    precision: str = "fp32"
    seed: int = 1
    augment: str = "flip"
    # Frozen-feature methods: number of augmented views cached per image (1 = exact features, no augmentation).
    feature_views: int = 1
    eval_batch_size: int = 256
    device: str = "auto"
    # Processes decoding and augmenting images (0 = the training process); None = min(8, CPU count).
    # Results do not depend on it: each image's augmentation is seeded by (seed, epoch, index).
    num_workers: int | None = None
    # Model selection on the validation split only (never on test): keep the last or the best-val epoch.
    select: str = "last"
    val_every: int = 1
    log_every: int = 10
    # Write the resume state every N optimizer steps (0 = only at epoch ends).
    checkpoint_every: int = 0
    resume: bool = True
    progress: bool = True
    # TensorBoard event files under <out>/tensorboard beside metrics.jsonl (needs vlprompt[tensorboard]).
    tensorboard: bool = False
    cache_dir: str | None = None
    deterministic: bool = field(default=False, metadata={"help": (
        "Deterministic kernels: torch.use_deterministic_algorithms(True), CUBLAS_WORKSPACE_CONFIG=:4096:8 and "
        "cuDNN's deterministic mode without benchmarking, so that the same seed on the same GPU gives bit-identical "
        "results. Costs speed on GPU only (no cuDNN autotuning, slower deterministic kernels for scatter/index-add "
        "backwards); changes nothing on CPU. An op without a deterministic implementation raises.")})

    def __post_init__(self) -> None:
        where = "TrainConfig"
        check_choice(where, "optimizer", self.optimizer, OPTIMIZERS)
        check_choice(where, "scheduler", self.scheduler, SCHEDULERS)
        check_choice(where, "precision", self.precision, PRECISIONS)
        check_choice(where, "augment", self.augment, AUGMENTS)
        check_choice(where, "select", self.select, SELECTIONS)
        check_choice(where, "warmup_type", self.warmup_type, WARMUP_TYPES)
        check_choice(where, "lr_update", self.lr_update, LR_UPDATES)
        check_choice(where, "cosine_span", self.cosine_span, COSINE_SPANS)
        check_range(where, "warmup_lr", self.warmup_lr, 0.0)
        if self.device.split(":")[0] == "mps":
            raise ConfigError(
                "train.device = 'mps' (Apple GPUs) is not supported: vlprompt's bf16 autocast, its generators' "
                "resume state and its distributed paths are written and tested for CPU and CUDA only. Use "
                "device=cpu on a Mac."
            )
        check_choice(where, "device", self.device.split(":")[0], ("auto", "cpu", "cuda"))
        check_range(where, "epochs", self.epochs, 0)
        check_range(where, "batch_size", self.batch_size, 1)
        check_range(where, "lr", self.lr, 0.0)
        check_range(where, "weight_decay", self.weight_decay, 0.0)
        check_range(where, "momentum", self.momentum, 0.0, 1.0)
        check_range(where, "adam_eps", self.adam_eps, 0.0)
        check_range(where, "warmup_epochs", self.warmup_epochs, 0.0)
        check_range(where, "warmup_start_factor", self.warmup_start_factor, 0.0, 1.0)
        check_range(where, "grad_accum", self.grad_accum, 1)
        check_range(where, "feature_views", self.feature_views, 1)
        check_range(where, "eval_batch_size", self.eval_batch_size, 1)
        check_range(where, "val_every", self.val_every, 1)
        check_range(where, "log_every", self.log_every, 1)
        check_range(where, "checkpoint_every", self.checkpoint_every, 0)
        if self.num_workers is not None:
            check_range(where, "num_workers", self.num_workers, 0)
        if self.max_grad_norm is not None:
            check_range(where, "max_grad_norm", self.max_grad_norm, 0.0)

    def resolved_num_workers(self) -> int:
        return min(8, os.cpu_count() or 1) if self.num_workers is None else self.num_workers

    def effective_lr(self, world_size: int = 1) -> float:
        if not self.scale_lr_by_batch:
            return self.lr
        return self.lr * self.batch_size * self.grad_accum * world_size / 256.0
