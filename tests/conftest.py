"""Shared test fixtures: tiny random-init backbones of the real architectures, built offline."""

from __future__ import annotations

import pytest
import torch
from optional_extras import hf_param

from vlprompt.backbones import tiny


def pytest_sessionstart(session: pytest.Session) -> None:
    # two cores shared by several processes: one thread keeps CPU timings stable and results reproducible
    torch.set_num_threads(1)


@pytest.fixture
def tiny_timm_vit():
    return tiny.tiny_timm_vit("vit", seed=0)


@pytest.fixture
def tiny_timm_mae():
    return tiny.tiny_timm_vit("mae", seed=0)


@pytest.fixture
def tiny_open_clip():
    return tiny.tiny_open_clip(seed=0)


@pytest.fixture
def tiny_open_clip_custom_text():
    return tiny.tiny_open_clip_custom_text(seed=0)


@pytest.fixture
def tiny_hf_clip():
    pytest.importorskip("transformers", reason="the optional [hf] extra")
    return tiny.tiny_hf_clip(seed=0)


@pytest.fixture(params=["open_clip", "open_clip_custom_text", hf_param("hf_clip")])
def tiny_clip(request):
    """Each tiny CLIP layout in turn (for tests that only need the Backbone contract)."""
    return getattr(tiny, f"tiny_{request.param}")(seed=0)
