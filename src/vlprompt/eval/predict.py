"""Logits and top-1 accuracy of a method on a dataset, with the backbone's eval transform."""
from __future__ import annotations

import torch

from vlprompt.core import distributed
from vlprompt.core.errors import VlpromptError
from vlprompt.data.base import ImageDataset
from vlprompt.data.features import encode_dataset, feature_cache_key
from vlprompt.data.loading import BatchLoader, workers_for
from vlprompt.data.transforms import eval_transform


@torch.no_grad()
def predict(method, dataset: ImageDataset, *, batch_size: int = 256, device: str | torch.device = "cpu",
            cache_dir: str | None = None, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for every item of ``dataset`` with the backbone's eval transform; ``num_workers``
    processes decode the images (0 = this one)."""
    device = distributed.resolve_device(str(device)) if isinstance(device, str) else device
    method = method.to(device)
    was_training = method.training
    method.eval()
    transform = eval_transform(method.backbone.preprocess)
    labels = torch.tensor(dataset.labels, dtype=torch.long)
    logits = []
    if method.uses_image_features:
        feats = encode_dataset(
            method.image_features,
            dataset.with_transform(transform),
            batch_size=batch_size,
            device=device,
            cache_dir=cache_dir,
            cache_key=feature_cache_key(method, dataset, "eval"),
            num_workers=num_workers,
        )
        for start in range(0, len(labels), batch_size):
            batch = {"features": feats[start : start + batch_size].to(device)}
            logits.append(method.predict(batch).float().cpu())
    else:
        batches = [range(start, min(start + batch_size, len(labels))) for start in range(0, len(labels), batch_size)]
        loader = BatchLoader(dataset.with_transform(transform), seed=None, persistent=False,
                             num_workers=workers_for(num_workers, len(batches)), pin_memory=device.type == "cuda")
        for images, _ in loader.run(0, batches):
            logits.append(method.predict({"image": images.to(device, non_blocking=True)}).float().cpu())
    method.train(was_training)
    return torch.cat(logits), labels


def top1_accuracy(method, dataset: ImageDataset, **kwargs) -> float:
    """Top-1 accuracy in [0, 1] (classification's metric; train/tasks.py ``evaluate`` dispatches on the task),
    computed from the counts (correct / total as a Python float), so that results read 0.845 for 169 of 200
    rather than a float32 mean's 0.8450000286102295."""
    if len(dataset) == 0:
        raise VlpromptError(f"Dataset '{dataset.name}' has no images to evaluate on.")
    logits, labels = predict(method, dataset, **kwargs)
    return int((logits.argmax(dim=1) == labels).sum()) / len(labels)
