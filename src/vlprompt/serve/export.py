"""Export an image-independent classifier: class-feature matrix + logit scale (+ bias) for the plain backbone.

A method qualifies when its image tower carries no prompts (it reads frozen features, ``uses_image_features``)
and its logits are an affine map of the (optionally L2-normalised) feature: logits = s·norm(v)·Wᵀ + b. Which
methods those are is not listed by name: the head is read off the method by probing it with basis features and
then verified on random features, so CoOp, KgCoOp, ProGrad, zero-shot, linear probes and any later method of that
shape export, and image-conditioned ones (CoCoOp's meta-net, the mixture's router) fail the check and are refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlprompt import __version__
from vlprompt.artifacts.checkpoint import backbone_spec, tensors_checksum
from vlprompt.artifacts.files import CLASSIFIER_META_NAME, CLASSIFIER_WEIGHTS_NAME
from vlprompt.core.errors import CheckpointError, VlpromptError
from vlprompt.core.io import atomic_write, atomic_write_json, read_json

EXPORT_FORMATS = ("classifier",)
_TOLERANCE = 1e-5  # relative to the largest logit magnitude


@dataclass
class ClassifierHead:
    """logits = logit_scale · f · class_featuresᵀ + bias, with f = normalize(v) when ``normalize`` else v."""

    class_features: torch.Tensor  # [C, D]
    logit_scale: float
    bias: torch.Tensor | None
    normalize: bool

    def __call__(self, image_features: torch.Tensor) -> torch.Tensor:
        features = image_features.float()
        if self.normalize:
            features = torch.nn.functional.normalize(features, dim=-1)
        logits = self.logit_scale * features @ self.class_features.to(features.device).t()
        return logits if self.bias is None else logits + self.bias.to(features.device)


def _refuse(method, why: str) -> CheckpointError:
    return CheckpointError(
        f"Method '{method.method_name}' cannot be exported as a classifier for the plain backbone: {why} Serve it "
        "with its prompt folder instead (vlprompt predict / from_pretrained)."
    )


@torch.no_grad()
def _logits(method, features: torch.Tensor) -> torch.Tensor:
    return method.predict({"features": features}).float()


def _agrees(expected: torch.Tensor, actual: torch.Tensor) -> bool:
    scale = max(float(expected.abs().max()), 1e-6)
    return float((expected - actual).abs().max()) <= _TOLERANCE * scale


@torch.no_grad()
def classifier_head(method) -> ClassifierHead:
    """Read the affine head off ``method`` and verify it; raise CheckpointError when there is none."""
    if not method.uses_image_features:
        raise _refuse(method, "its prompts or trained weights sit inside the image tower (VPT, SPT, fine-tuning), "
                              "so the plain backbone's features are not the ones it classifies.")
    method.eval()
    device = next((p.device for p in method.parameters()), torch.device("cpu"))
    dim = method.backbone.visual.feature_dim
    eye = torch.eye(dim, device=device)
    zero = torch.zeros(1, dim, device=device)
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(8, dim, generator=generator).to(device) * 3.0
    bias = _logits(method, zero)[0]
    weight = _logits(method, eye) - bias  # row d: the logits of basis feature e_d (unit norm either way)
    head = None
    for normalize in (True, False):
        candidate = ClassifierHead(weight.t().contiguous(), 1.0, bias, normalize)
        if _agrees(_logits(method, probe), candidate(probe)):
            head = candidate
            break
    if head is None:
        raise _refuse(method, "its logits are not an affine function of the image feature (an image-conditioned "
                              "prompt such as CoCoOp's meta-net or a mixture's router, or Tip-Adapter's cache "
                              "affinities), so no fixed class-feature matrix exists.")
    norms = head.class_features.norm(dim=-1)
    if head.normalize and float((norms.max() - norms.min()).abs()) <= 1e-5 * float(norms.max()):
        head = ClassifierHead(head.class_features / norms[:, None], float(norms.mean()), head.bias, True)
    if head.bias is not None and float(head.bias.abs().max()) <= 1e-6 * max(float(norms.max()), 1.0):
        head = ClassifierHead(head.class_features, head.logit_scale, None, head.normalize)
    return head


def export_classifier(method, out: str | Path, source: str | None = None) -> Path:
    """Write classifier.safetensors (class_features, logit_scale, bias?) and classifier.json into ``out``."""
    head = classifier_head(method)
    out = Path(out)
    tensors = {
        "class_features": head.class_features.detach().float().cpu().contiguous(),
        "logit_scale": torch.tensor(head.logit_scale, dtype=torch.float32),
    }
    if head.bias is not None:
        tensors["bias"] = head.bias.detach().float().cpu().contiguous()
    atomic_write(out / CLASSIFIER_WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_json(out / CLASSIFIER_META_NAME, {
        "format": "vlprompt-classifier",
        "version": __version__,
        "method": method.method_name,
        "source": source,
        "backbone": backbone_spec(method.backbone),
        "classnames": list(method.labels.classnames),
        "normalize_features": head.normalize,
        "has_bias": head.bias is not None,
        "formula": "logits = logit_scale * f @ class_features.T (+ bias), f = backbone image features "
                   "(the image tower's output; L2-normalised when normalize_features)",
        "tensors_sha256": tensors_checksum(tensors),
    })
    return out


def load_classifier(folder: str | Path) -> tuple[ClassifierHead, dict]:
    """An exported head and its sidecar (safetensors + JSON only)."""
    folder = Path(folder)
    meta_path, weights_path = folder / CLASSIFIER_META_NAME, folder / CLASSIFIER_WEIGHTS_NAME
    if not meta_path.exists() or not weights_path.exists():
        raise VlpromptError(f"'{folder}' holds no exported classifier ({CLASSIFIER_WEIGHTS_NAME} + "
                            f"{CLASSIFIER_META_NAME}); write one with 'vlprompt export RUN --format classifier'.")
    meta = read_json(meta_path, "the exported classifier is damaged; export it again.", CheckpointError)
    try:
        tensors = load_file(str(weights_path))
    except Exception as error:  # noqa: BLE001  (safetensors raises several types for damaged files)
        raise CheckpointError(f"Cannot read '{weights_path}' ({error}); export the classifier again.") from None
    if tensors_checksum(tensors) != meta.get("tensors_sha256"):
        raise CheckpointError(f"'{weights_path}' does not match the checksum in '{meta_path}'; copy both together.")
    head = ClassifierHead(tensors["class_features"], float(tensors["logit_scale"]), tensors.get("bias"),
                          bool(meta["normalize_features"]))
    return head, meta
