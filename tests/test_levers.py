"""Training levers of issue 23 (mixup / cutmix, head-only warm-up, differential learning rates, weight
EMA, the ``strong`` augmentation): each setting is checked before any work and does what it says."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from liverscope.config import load_config
from liverscope.data.augment import build_transform
from liverscope.data.preprocess import Preprocessing
from liverscope.errors import LiverscopeError, UsageError
from liverscope.models import build_model
from liverscope.training.lightning_module import (
    LitClassifier,
    parameter_groups,
    weight_averaging,
)


@pytest.mark.parametrize(
    "key,bad",
    [
        ("train.mixup", -0.1),
        ("train.cutmix", "lots"),
        ("train.ema", 1.0),
        ("train.backbone_lr_mult", -1),
        ("train.warmup_epochs", 1.5),
        ("data.augment", "heavy"),
    ],
)
def test_each_lever_is_checked_before_any_work(key, bad):
    with pytest.raises(UsageError, match=key.split(".")[1]):
        load_config("cpu-quick", {key: bad})


def _module(**train):
    cfg = load_config("cpu-quick", {f"train.{k}": v for k, v in train.items()})
    torch.manual_seed(0)
    model = build_model("resnet10t", 3, head="linear")
    return LitClassifier(model, cfg.train), model


def test_mixup_trains_on_soft_targets_and_refuses_class_weights():
    lit, _ = _module(mixup=0.4, cutmix=1.0, label_smoothing=0.1)
    assert lit.mixer is not None and _module()[0].mixer is None
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    mixed_x, soft = lit.mixer(x.clone(), y)
    assert soft.shape == (4, 3) and torch.allclose(soft.sum(1), torch.ones(4)) and not torch.equal(mixed_x, x)
    loss = lit.loss(lit.model(mixed_x), soft)
    assert torch.isfinite(loss) and loss > 0
    lit.set_class_weights(np.array([1.0, 2.0, 3.0], np.float32))
    with pytest.raises(LiverscopeError, match="sampler"):
        lit.loss(lit.model(mixed_x), soft)


def test_differential_learning_rates_put_the_backbone_at_a_fraction_of_the_head():
    lit, model = _module(lr=1e-3, backbone_lr_mult=0.1, optimizer="adamw", scheduler="none")
    opt = lit.configure_optimizers()
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([1e-4, 1e-3])
    backbone = {id(p) for p in model.backbone.parameters()}
    slow = next(g for g in opt.param_groups if g["lr"] == pytest.approx(1e-4))
    assert {id(p) for p in slow["params"]} == backbone
    assert len(parameter_groups(model, 1e-3)) == len(list(model.parameters()))  # one group without the lever


def test_head_only_warm_up_freezes_the_backbone_for_its_epochs():
    lit, model = _module(warmup_epochs=2)
    for epoch, trains in ((0, False), (1, False), (2, True)):
        object.__setattr__(
            lit, "_trainer", SimpleNamespace(current_epoch=epoch)
        )  # what Lightning's current_epoch reads
        lit.on_train_epoch_start()
        assert all(p.requires_grad is trains for p in model.backbone.parameters())
        assert all(p.requires_grad for p in model.head.parameters())


def test_ema_is_lightnings_callback_and_off_by_default():
    from lightning.pytorch.callbacks import EMAWeightAveraging

    assert weight_averaging(load_config("cpu-quick").train) == []
    (cb,) = weight_averaging(load_config("cpu-quick", {"train.ema": 0.99}).train)
    assert isinstance(cb, EMAWeightAveraging)


def test_strong_augmentation_crops_rotates_and_keeps_the_input_size():
    pp = Preprocessing(size=64, denoise=False)
    img = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3))
    torch.manual_seed(0)
    aug = build_transform("strong", pp, train=True)
    outs = [aug(img) for _ in range(4)]
    assert all(o.shape == (3, 64, 64) for o in outs)
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


def test_a_run_trains_with_every_lever_on(phantom_dir, tmp_path):
    from conftest import quick_config
    from liverscope.training.run import fit

    cfg = quick_config(
        phantom_dir,
        tmp_path,
        "levers",
        **{
            "train.epochs": 2,
            "train.mixup": 0.2,
            "train.cutmix": 1.0,
            "train.warmup_epochs": 1,
            "train.backbone_lr_mult": 0.1,
            "train.ema": 0.9,
            "data.augment": "strong",
            "train.balance": "sampler",
        },
    )
    run = fit(cfg)
    assert (run / "model.safetensors").exists() or any(run.glob("*.safetensors"))
