"""The method contract (methods/base.py): abstract hooks are binding, every registered method is at most two
levels below PromptMethod, and the hooks callers use are declared on the base with their defaults."""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from vlprompt.methods import METHODS, PromptMethod, list_methods, register_method
from vlprompt.methods.clip import ClipMethod

HOOKS = ("forward", "predict", "image_features", "trainable_parameters", "trainable_state_dict",
         "class_dependent_parameter_names", "resize_for_checkpoint", "set_labels", "setup", "prepare",
         "grad_parts", "combine_grads", "on_step_end", "on_epoch_end", "on_fit_end", "frozen_modules")


@dataclasses.dataclass
class _Empty:
    pass


def test_every_hook_is_declared_on_the_base_with_a_docstring():
    for name in HOOKS:
        hook = PromptMethod.__dict__[name]
        assert callable(hook) and len(inspect.getdoc(hook) or "") > 40, name
    assert PromptMethod.__abstractmethods__ == frozenset({"forward"})
    assert PromptMethod.uses_image_features is False and PromptMethod.needs_text_tower is False


def test_a_method_without_forward_cannot_be_instantiated_or_registered(tiny_timm_vit):
    class NoForward(PromptMethod):
        config_class = _Empty

    with pytest.raises(TypeError, match="abstract"):
        NoForward(tiny_timm_vit, None, _Empty())
    with pytest.raises(TypeError, match=r"Method 'no-forward' \(.*NoForward\) cannot be registered.*forward"):
        register_method("no-forward")(NoForward)
    assert "no-forward" not in METHODS


def test_a_method_without_config_class_cannot_be_registered():
    class NoConfig(PromptMethod):
        def forward(self, batch: dict) -> dict:
            return {}

    with pytest.raises(TypeError, match="set config_class"):
        register_method("no-config")(NoConfig)
    assert "no-config" not in METHODS


def test_every_registered_method_is_at_most_two_levels_below_prompt_method():
    names = list_methods()
    assert len(names) >= 21
    for name in names:
        cls = METHODS.get(name)
        below = [klass for klass in cls.__mro__ if issubclass(klass, PromptMethod) and klass is not PromptMethod]
        assert 1 <= len(below) <= 2, (name, [k.__name__ for k in below])
        assert not inspect.isabstract(cls), name
        assert cls.method_name == name


def test_clip_method_lives_in_clip_py():
    assert ClipMethod.__module__ == "vlprompt.methods.clip"


def test_default_gradient_hooks_are_one_part_of_the_loss_gradient(tiny_timm_vit):
    from vlprompt.data.base import LabelSpace
    from vlprompt.methods import create_method

    method = create_method("linear", tiny_timm_vit, LabelSpace(["a", "b", "c"], ["a photo of a {}."]))
    params = method.trainable_parameters()
    features = torch.randn(4, tiny_timm_vit.visual.feature_dim, generator=torch.Generator().manual_seed(0))
    outputs = method({"features": features, "label": torch.tensor([0, 1, 2, 0])})
    parts = method.grad_parts(outputs, params)
    expected = torch.autograd.grad(method({"features": features, "label": torch.tensor([0, 1, 2, 0])})["loss"],
                                   params)
    assert len(parts) == 1 and len(parts[0]) == len(params)
    for got, want in zip(method.combine_grads(parts), expected):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
