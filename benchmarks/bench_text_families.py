"""What a non-causal text tower costs the CLIP text methods: one CoOp training step on three text towers.

SigLIP's text tower is bidirectional and pools the last of its 64 slots, so neither exact fast path holds there
(EOT truncation, the shared [SOS, ctx] prefix): every step runs all 64 slots for every class. This benchmark puts
that cost beside OpenAI-CLIP's B/16 text tower with and without its fast paths, measured side by side:

- ``clip_b16_fast``: open_clip ViT-B-16's text tower (causal, 77 slots, width 512), both exact fast paths;
- ``clip_b16_plain``: the same tower forced onto the plain path (``fast_paths_exact`` off while the prompt layout is
  built and at every step), all 77 slots per class;
- ``siglip_b16``: a ViT-B-16-SigLIP-shaped text tower (bidirectional, 64 slots, width 768, 12 layers, pooled at the
  last slot), which only has the plain path.

One step = CoOp (16 shared context tokens, 10 classes) on cached image features (batch 32): forward through the
text tower, gradient, SGD. Random weights (speed only); the arms take turns within each round (round 0 warms up)
and ratios are the median of per-round ratios, so load from other processes hits all arms alike.

    python benchmarks/bench_text_families.py [--rounds 5] [--threads 1]   # -> results/text_families.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vlprompt.data.base import LabelSpace
from vlprompt.methods import create_method

CLASSES = ["airplane", "bicycle", "horse", "tulip", "castle", "lobster", "violin", "tractor", "bee", "maple tree"]
RESULTS = Path(__file__).resolve().parent / "results"


def siglip_b16_text_shaped(seed: int = 0):
    """open_clip CustomTextCLIP with ViT-B-16-SigLIP's text config (vocabulary 32000, context 64), a tiny image
    tower (only the text step is timed) and the offline SentencePiece-style tokenizer of the tiny SigLIP."""
    import open_clip

    from vlprompt.backbones import tiny
    from vlprompt.backbones.open_clip import open_clip_preprocess, wrap_open_clip

    config = open_clip.get_model_config("ViT-B-16-SigLIP")
    text_cfg = {k: v for k, v in config["text_cfg"].items() if k not in ("hf_tokenizer_name", "tokenizer_kwargs")}
    vision = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1, "head_width": 32}
    torch.manual_seed(seed)
    model = open_clip.CustomTextCLIP(
        embed_dim=config["embed_dim"], vision_cfg=vision, text_cfg=text_cfg, init_logit_bias=config["init_logit_bias"]
    ).eval()
    return wrap_open_clip(
        model, tiny.tiny_sentencepiece_tokenizer("t5"), open_clip_preprocess(model), "random:siglip-b16-text-shaped"
    )


def coop_step(backbone, plain: bool | None = None) -> Callable[[], None]:
    """One CoOp step on cached features; ``plain`` switches the tower's fast paths off for the step."""
    labels = LabelSpace(CLASSES, ["a photo of a {}."])
    text = backbone.text
    exact = text.fast_paths_exact
    if plain is not None:  # the prompt layout is cut at the longest EOT when built with the fast paths on
        text.fast_paths_exact = exact and not plain
    torch.manual_seed(0)
    try:
        method = create_method("coop", backbone, labels, n_ctx=16).train()
    finally:
        text.fast_paths_exact = exact
    params = method.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "features": torch.randn(32, backbone.visual.feature_dim, generator=generator),
        "label": torch.randint(0, len(CLASSES), (32,), generator=generator),
    }

    def step() -> None:
        if plain is not None:
            text.fast_paths_exact = exact and not plain
        try:
            loss = method(batch)["loss"]
            grads = torch.autograd.grad(loss, params)
            for param, grad in zip(params, grads):
                param.grad = grad
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        finally:
            text.fast_paths_exact = exact

    return step


def interleaved(calls: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(rounds + 1):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if round_index:
                times[name].append(time.perf_counter() - started)
    return times


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from vlprompt.backbones.tiny import clip_b16_shaped

    started = time.perf_counter()
    clip, siglip = clip_b16_shaped(seed=0).freeze(), siglip_b16_text_shaped(seed=0).freeze()
    calls = {
        "clip_b16_fast": coop_step(clip, plain=False),
        "clip_b16_plain": coop_step(clip, plain=True),
        "siglip_b16": coop_step(siglip),
    }
    times = interleaved(calls, args.rounds)
    load = os.getloadavg()
    results = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": args.threads,
        "rounds": args.rounds,
        "load_average_1_5_15": [round(v, 2) for v in load],
        "median_step_seconds": {name: statistics.median(v) for name, v in times.items()},
        "step_seconds": times,
        "ratios": {
            "clip_plain_over_fast": paired_ratio(times, "clip_b16_plain", "clip_b16_fast"),
            "siglip_over_clip_fast": paired_ratio(times, "siglip_b16", "clip_b16_fast"),
            "siglip_over_clip_plain": paired_ratio(times, "siglip_b16", "clip_b16_plain"),
        },
        "text_towers": {
            "clip_b16": {"causal": clip.text.causal, "pooling": clip.text.pooling, "context": clip.text.context_length,
                         "width": clip.text.width},
            "siglip_b16": {"causal": siglip.text.causal, "pooling": siglip.text.pooling,
                           "context": siglip.text.context_length, "width": siglip.text.width},
        },
        "total_seconds": time.perf_counter() - started,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "text_families.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "text_families.md").write_text(render(results))
    print(render(results))


def render(results: dict) -> str:
    medians = results["median_step_seconds"]
    ratios = results["ratios"]
    fast, plain, siglip = medians["clip_b16_fast"], medians["clip_b16_plain"], medians["siglip_b16"]
    clip_tower = "CLIP ViT-B/16 (causal, 77 slots, width 512)"
    siglip_tower = "SigLIP ViT-B/16 (bidirectional, 64 slots, width 768)"
    intro = (
        "Generated by `benchmarks/bench_text_families.py`: CoOp, 16 context tokens, 10 classes, batch 32 of cached "
        f"image features, random weights; median of {results['rounds']} interleaved rounds. Load average "
        f"(1/5/15 min) at the end: {results['load_average_1_5_15']}; total {results['total_seconds']:.0f} s."
    )
    lines = [
        f"# CoOp step time by text-tower family (CPU, {results['threads']} thread, torch {results['torch']})",
        "",
        intro,
        "",
        "| text tower | path | step (s) | vs CLIP fast |",
        "|---|---|---|---|",
        f"| {clip_tower} | EOT truncation + shared prefix | {fast:.3f} | 1.00 |",
        f"| {clip_tower} | plain (fast paths off) | {plain:.3f} | {ratios['clip_plain_over_fast']:.2f} |",
        f"| {siglip_tower} | plain (no exact fast path) | {siglip:.3f} | {ratios['siglip_over_clip_fast']:.2f} |",
        "",
        (f"SigLIP's step over CLIP's plain path: {ratios['siglip_over_clip_plain']:.2f}x (the wider tower, not the "
         "path: both run every slot)."),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
