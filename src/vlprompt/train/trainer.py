"""The one training loop. Methods plug in through the hooks PromptMethod declares (methods/base.py, each with a
default); there is no trainer subclass per method.

Determinism: the order of an epoch is a permutation drawn from a generator seeded by (seed, epoch); an
image's augmentation is drawn from a generator seeded by (seed, epoch, index) in whichever DataLoader worker
decodes it (data/loading.py), so the worker count changes nothing; every other random draw (dropout) comes
from torch's global RNGs, CPU and CUDA, whose states are saved in the resume state together with the
optimizer and the position in the epoch. Killing a run and resuming it therefore replays exactly the same
steps, and on CPU gives bit-identical parameters.

What one optimizer step computes on each rank, and how gradients are accumulated and reduced, is train/step.py;
SIGTERM handling (save at the next step boundary, then stop) is train/preemption.py.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vlprompt.artifacts.checkpoint import save_prompts
from vlprompt.artifacts.resume_state import load_resume_state, refuse_legacy_pickle, save_resume_state
from vlprompt.artifacts.run_dir import RunDir
from vlprompt.core import distributed
from vlprompt.core.io import check_writable_dir
from vlprompt.core.seeding import derived_seed, set_deterministic
from vlprompt.data.base import ImageDataset, TaskData
from vlprompt.data.features import encode_dataset, feature_cache_key
from vlprompt.data.loading import workers_for
from vlprompt.data.transforms import eval_transform, train_transform
from vlprompt.eval.predict import predict
from vlprompt.eval.tasks import evaluate, task_type_of
from vlprompt.train import resume, step
from vlprompt.train.callbacks import Callback, CallbackList, config_callbacks
from vlprompt.train.config import TrainConfig
from vlprompt.train.preemption import preempted_error, stop_on_sigterm
from vlprompt.train.schedule import build_optimizer, lr_at
from vlprompt.train.sources import FeatureSource, ImageSource

__all__ = ["FitResult", "Trainer", "evaluate", "predict"]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    val_accuracy: float | None
    train_seconds: float
    steps: int
    history: list[dict] = field(default_factory=list)
    out_dir: Path | None = None


class Trainer:
    """Fits one method on one task. ``out_dir`` (optional) receives metrics, the resume state and prompts;
    ``callbacks`` observe the loop (train/callbacks.py), and ``config.tensorboard`` adds a TensorBoard one.

    ``fingerprint`` is the result-defining fields of the run (run_dir.fingerprint_fields), given by a caller
    that owns the run folder's config.json and results (run_experiment). Without it (the Python API) the
    trainer writes the same config.json the CLI writes, from the method, the training config and the task, so
    that ``vlprompt eval`` reads the folder, and removes the resume state once the prompts are written.
    """

    def __init__(self, method, config: TrainConfig | None = None, out_dir: str | Path | None = None,
                 callbacks: list[Callback] | tuple[Callback, ...] = (), fingerprint: dict | None = None) -> None:
        self.method = method
        self.config = config or TrainConfig()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_dir = RunDir(self.out_dir) if self.out_dir is not None else None
        self.fingerprint = fingerprint
        self.owns_folder = fingerprint is None
        set_deterministic(self.config.deterministic)  # before the device: cuBLAS reads its workspace setting once
        self.device = distributed.resolve_device(self.config.device)
        self.rank = distributed.rank()
        self.world_size = distributed.world_size()
        self.is_main = self.rank == 0
        self.step = 0
        self.epoch = 0
        self.history: list[dict] = []
        self._feature_memo: dict[tuple, torch.Tensor] = {}
        if self.out_dir is not None and self.is_main:
            check_writable_dir(self.out_dir)
        self.callbacks = CallbackList([*callbacks, *config_callbacks(self.config, self.out_dir)])

    # ----- hooks' helpers -----
    def log_metrics(self, record: dict) -> None:
        """Append a record to metrics.jsonl (rank 0 only) and to the in-memory history, then pass it to the
        callbacks' ``on_log``."""
        record = {"step": self.step, "epoch": self.epoch, **record}
        self.history.append(record)
        if self.run_dir is not None and self.is_main:
            self.run_dir.append_metric(record)
        self.callbacks.on_log(self, dict(record))

    # ----- data -----
    def _features(self, dataset: ImageDataset, transform, name: str, views: int = 1) -> torch.Tensor:
        cache_dir = Path(self.config.cache_dir) if self.config.cache_dir else None
        return encode_dataset(
            self.method.image_features,
            dataset.with_transform(transform),
            batch_size=self.config.eval_batch_size,
            device=self.device,
            cache_dir=cache_dir,
            cache_key=feature_cache_key(self.method, dataset, name),
            views=views,
            seed=self.config.seed,
            num_workers=self.config.resolved_num_workers(),
        )

    def cached_features(self, dataset: ImageDataset, train: bool = False) -> torch.Tensor:
        """Frozen image features as the loop sees them, computed once per fit: the training views ([V, N, D]
        when feature_views > 1 with augmentation, else [N, D]) or, with ``train`` False, the eval transform's."""
        config = self.config
        preprocess = self.method.backbone.preprocess
        views = config.feature_views if train and config.augment != "none" else 1
        key = (id(dataset), views)
        if key not in self._feature_memo:
            if views > 1:
                tf, name = train_transform(preprocess, config.augment), f"train-{config.augment}"
            else:
                tf, name = eval_transform(preprocess), "eval"
            self._feature_memo[key] = self._features(dataset, tf, name, views=views)
        return self._feature_memo[key]

    def _train_source(self, dataset: ImageDataset):
        config = self.config
        preprocess = self.method.backbone.preprocess
        if self.method.uses_image_features:
            labels = torch.tensor(dataset.labels, dtype=torch.long)
            return FeatureSource(self.cached_features(dataset, train=True), labels, config.seed)
        batches_per_epoch = math.ceil(len(dataset) / (config.batch_size * self.world_size))
        transform = task_type_of(dataset).train_transform(preprocess, config.augment)
        return ImageSource(dataset.with_transform(transform), config.seed,
                            workers_for(config.resolved_num_workers(), batches_per_epoch),
                            pin_memory=self.device.type == "cuda")

    # ----- the loop -----
    def fit(self, task: TaskData) -> FitResult:
        if self.run_dir is None or not self.owns_folder:
            return self._fit(task)
        with ExitStack() as held:  # rank 0 holds the folder's lock until training ends

            def decide() -> dict:
                held.enter_context(self.run_dir.lock())
                return self.run_dir.start_api_run(self.method, self.config, task)

            self.fingerprint = distributed.decided_by_rank_zero(decide)
            return self._fit(task)

    def _fit(self, task: TaskData) -> FitResult:
        config = self.config
        method = self.method.to(self.device)
        started = time.perf_counter()
        preprocess = method.backbone.preprocess
        self._feature_memo = {}
        method.setup(task.train.with_transform(task_type_of(task.train).eval_transform(preprocess)), self)
        self.callbacks.on_fit_start(self, task)
        method.prepare(task, self)
        params = [p for p in method.trainable_parameters()]
        if not params or config.epochs == 0:
            # Nothing to train (zero-shot, training-free Tip-Adapter) or nothing asked (epochs=0): the checkpoint
            # holds what exists (no tensors, the initial values, or a fitted cache), so the folder evaluates like
            # any other.
            method.on_fit_end(task, self)
            val = self.evaluate(task.val) if task.val is not None else None
            self._save_final(val)
            result = FitResult(val, time.perf_counter() - started, 0, self.history, self.out_dir)
            self.callbacks.on_fit_end(self, result)
            return result

        source = self._train_source(task.train)
        n = len(source)
        global_batch = config.batch_size * self.world_size
        micro_per_epoch = math.ceil(n / global_batch)
        steps_per_epoch = math.ceil(micro_per_epoch / config.grad_accum)
        total_steps = steps_per_epoch * config.epochs
        warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps)
        optimizer = build_optimizer(config, params, self.world_size)
        base_lr = config.effective_lr(self.world_size)

        start_epoch, start_micro, best = 0, 0, (-1.0, None)
        resume_path = self.run_dir.resume if self.run_dir is not None else None
        if resume_path is not None and config.resume:
            refuse_legacy_pickle(self.run_dir.legacy_resume)
        state = load_resume_state(resume_path) if resume_path is not None and config.resume else None
        if state is not None:
            start_epoch, start_micro, best = resume.restore(self, state, optimizer)
            log.warning("resuming from step %d (epoch %d, batch %d) of the run in '%s'", self.step,
                        start_epoch + 1, start_micro, self.out_dir)
        # Every rank has read what it needed from the folder: rank 0 may now rewrite or delete files in it.
        step.check_same_start(method)
        if self.run_dir is not None and self.is_main:
            self.run_dir.rewrite_metrics(self.history)  # one history: the restored one, or none

        with stop_on_sigterm() as stop:
            best = self._loop(task, source, optimizer, params, (start_epoch, start_micro, best), stop,
                              (micro_per_epoch, total_steps, warmup_steps, base_lr), started)

        if config.select == "best_val" and best[1] is not None:
            with torch.no_grad():
                named = method.trained_tensors()
                for name, tensor in best[1].items():
                    named[name].copy_(tensor)
        method.on_fit_end(task, self)  # after training, before saving (Tip-Adapter's α/β search on val)
        method.eval()
        seconds = time.perf_counter() - started
        val = best[0] if config.select == "best_val" and best[1] is not None else None
        if val is None and task.val is not None:
            val = next((r["val_accuracy"] for r in reversed(self.history) if "val_accuracy" in r), None)
        resume.check_finite(self, "the trained prompts")
        self._save_final(val)
        result = FitResult(val, seconds, self.step, self.history, self.out_dir)
        self.callbacks.on_fit_end(self, result)
        return result

    def _save_final(self, val: float | None) -> None:
        if self.run_dir is None or not self.is_main:
            return
        save_prompts(self.method, self.out_dir, extra={"train_config": self.config.__dict__, "val_accuracy": val})
        if self.owns_folder:  # otherwise the caller removes it once results are written (RunDir.write_results)
            self.run_dir.resume.unlink(missing_ok=True)

    def _loop(self, task: TaskData, source, optimizer, params: list, start: tuple, stop, schedule: tuple,
              started: float):
        """The epochs from ``start`` = (epoch, micro-batch, best) on; returns the best-val record. A SIGTERM
        (``stop``) ends it at the next step boundary, after the resume state of that boundary is saved."""
        config, method = self.config, self.method
        start_epoch, start_micro, best = start
        micro_per_epoch, total_steps, warmup_steps, base_lr = schedule
        n = len(source)
        global_batch = config.batch_size * self.world_size
        resume_path = self.run_dir.resume if self.run_dir is not None else None
        accumulator = step.GradientAccumulator(method, params, self.world_size)
        diverged = lambda what: resume.diverged_error(self, what)
        method.train()
        accum_count = 0
        try:
            for epoch in range(start_epoch, config.epochs):
                self.epoch = epoch
                order = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(config.seed, epoch)))
                first = start_micro if epoch == start_epoch else 0
                bar = tqdm(
                    range(first, micro_per_epoch),
                    desc=f"epoch {epoch + 1}/{config.epochs}",
                    # None lets tqdm switch itself off when stderr is not a terminal (logs, CI).
                    disable=None if config.progress and self.is_main else True,
                    leave=False,
                )
                local = step.rank_slices(order, first, micro_per_epoch, global_batch, self.rank, self.world_size)
                batches = source.batches(epoch, [indices for indices in local if len(indices)])
                for micro, local_indices in zip(bar, local):
                    group = micro // config.grad_accum * config.grad_accum * global_batch
                    group_total = min(group + config.grad_accum * global_batch, n) - group
                    loss_value = 0.0
                    if len(local_indices):  # an empty share runs nothing but still joins the reduction
                        batch = {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items()}
                        outputs, loss_value = step.forward_loss(method, batch, config.precision, self.device,
                                                                diverged)
                        accumulator.add(outputs, len(local_indices), group_total)
                    accum_count += 1
                    last_micro = micro == micro_per_epoch - 1
                    if accum_count < config.grad_accum and not last_micro:
                        continue
                    accum_count = 0
                    self._optimizer_step(optimizer, params, accumulator.take(), base_lr, total_steps, warmup_steps)
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                    method.on_step_end(self.step, self)
                    self.callbacks.on_step_end(self, self.step)
                    if self.step % config.log_every == 0:
                        loss_mean = step.mean_loss(loss_value, len(local_indices))
                        self.log_metrics({"loss": loss_mean, "lr": optimizer.param_groups[0]["lr"]})
                    if last_micro:  # the epoch's end saves (and stops) below
                        continue
                    stopping = distributed.any_rank(stop.requested)
                    if stopping or (config.checkpoint_every and self.step % config.checkpoint_every == 0):
                        self._save_resume(resume_path, optimizer, epoch, micro + 1, best)
                    if stopping:
                        raise preempted_error(self.out_dir, self.step, saved=resume_path is not None)
                method.on_epoch_end(epoch, self)
                log.info("epoch %d/%d done (%d steps, %.0f s)", epoch + 1, config.epochs, self.step,
                         time.perf_counter() - started)
                if task.val is not None and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
                    accuracy = self.evaluate(task.val)
                    method.train()
                    self.log_metrics({"val_accuracy": accuracy})
                    self.callbacks.on_eval(self, epoch, accuracy)
                    if config.select == "best_val" and accuracy > best[0]:
                        best = (accuracy, copy.deepcopy(method.trainable_state_dict()))
                self.callbacks.on_epoch_end(self, epoch)
                self._save_resume(resume_path, optimizer, epoch + 1, 0, best)
                if distributed.any_rank(stop.requested):
                    raise preempted_error(self.out_dir, self.step, saved=resume_path is not None)
        finally:
            source.close()
        return best

    def _optimizer_step(self, optimizer, params, grads: list, base_lr: float, total: int, warmup: int) -> None:
        """Set the step's reduced gradients (train/step.py), clip, set the lr, step."""
        for param, grad in zip(params, grads):
            param.grad = grad
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(self.config, self.step, base_lr, total, warmup)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.step += 1

    # ----- resume -----
    def _save_resume(self, path: Path | None, optimizer, epoch: int, micro: int, best) -> None:
        if path is None or not self.is_main:
            return
        resume.check_finite(self, "the resume state")  # a poisoned state must never be what a rerun resumes from
        save_resume_state(path, resume.resume_state(self, optimizer, epoch, micro, best))

    # ----- evaluation -----
    def evaluate(self, dataset: ImageDataset) -> float:
        return evaluate(self.method, dataset, batch_size=self.config.eval_batch_size, device=self.device,
                        cache_dir=self.config.cache_dir, num_workers=self.config.resolved_num_workers())
