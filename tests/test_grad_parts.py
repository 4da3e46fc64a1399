"""ProGrad's projection acts on the full batch's gradients, whatever grad_accum splits it into."""
from __future__ import annotations

import pytest
import torch
from test_text_training import toy_task, train_config

from vlprompt.backbones.tiny import tiny_open_clip
from vlprompt.methods.base import create_method
from vlprompt.train import Trainer


@pytest.fixture(scope="module")
def clip():
    return tiny_open_clip(seed=0)


def fit_prograd(clip, per_micro_projection: bool = False, **train) -> torch.Tensor:
    task = toy_task(n_train=24)
    torch.manual_seed(0)
    method = create_method("prograd", clip, task.labels, n_ctx=4, lam=1.0)
    if per_micro_projection:  # what projecting each micro-batch on its own (the naive hook) would do
        split = method.grad_parts
        method.grad_parts = lambda outputs, params: [method.combine_grads(split(outputs, params))]
    config = train_config(epochs=3, lr=0.5, optimizer="sgd", momentum=0.0, weight_decay=0.0, warmup_epochs=0,
                          **train)
    Trainer(method, config).fit(task)
    return method.prompt.ctx.detach().clone()


def test_prograd_with_grad_accum_matches_one_big_batch_and_per_micro_projection_does_not(clip):
    big = fit_prograd(clip, batch_size=8)
    accumulated = fit_prograd(clip, batch_size=4, grad_accum=2)
    torch.testing.assert_close(accumulated, big, rtol=1e-4, atol=1e-6)
    naive = fit_prograd(clip, per_micro_projection=True, batch_size=4, grad_accum=2)
    assert (naive - big).abs().max() > 1e-4  # the test would catch a projection per micro-batch
