"""Config resolution: defaults < YAML < CLI flags; every shipped recipe loads."""

from __future__ import annotations

import pytest

from liverscope.config import CHOICES, load_config, recipe_names
from liverscope.errors import LiverscopeError, UsageError
from liverscope.rundir import read_config, write_config


@pytest.mark.parametrize("recipe", recipe_names())
def test_recipes_load(recipe):
    cfg = load_config(recipe)
    assert cfg.model.name and cfg.train.epochs > 0


def test_recipe_values():
    e = load_config("effnet-b0-gradcam")
    assert (
        e.model.name,
        e.data.image_size,
        e.data.augment,
        e.train.balance,
        e.train.lr,
        e.train.weight_decay,
        e.train.scheduler,
        e.train.epochs,
    ) == ("efficientnet_b0", 224, "ultrasound", "sampler", 1e-4, 1e-5, "step", 100)
    m = load_config("mobilenetv2-multidisease")
    assert (
        m.data.image_size,
        m.model.freeze_backbone,
        m.model.head,
        m.train.balance,
        m.train.lr,
        m.train.scheduler,
        m.train.plateau_factor,
        m.train.plateau_patience,
        m.train.early_stop_patience,
    ) == (160, True, "mlp128", "weighted_ce", 1e-3, "plateau", 0.5, 10, 20)
    r = load_config("resnet50-cbam")
    assert (
        r.model.name,
        r.data.augment,
        r.train.lr,
        r.train.weight_decay,
        r.train.scheduler,
        r.train.batch_size,
    ) == ("resnet50_cbam", "conservative", 1e-5, 1e-4, "cosine", 64)


def test_cli_overrides_beat_yaml_and_none_keeps_yaml():
    cfg = load_config("cpu-quick", {"train.lr": 0.5, "train.epochs": None, "name": "x"})
    assert (
        cfg.train.lr == 0.5 and cfg.train.epochs == load_config("cpu-quick").train.epochs and cfg.name == "x"
    )


def test_unknown_settings_are_errors(tmp_path):
    with pytest.raises(LiverscopeError, match="unknown setting 'train.lrr'"):
        load_config(None, {"train.lrr": 1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2]\n")
    with pytest.raises(LiverscopeError, match="mapping"):
        load_config(bad)
    with pytest.raises(LiverscopeError, match="not found"):
        load_config("no-such-recipe")


def test_saved_config_roundtrip(tmp_path):
    cfg = load_config("resnet50-cbam", {"name": "r"})
    write_config(tmp_path, cfg)
    assert read_config(tmp_path).to_dict() == cfg.to_dict()


def test_text_values_take_the_type_of_the_setting():
    # `--set KEY=VALUE` passes text; numbers and booleans must not stay strings
    cfg = load_config(
        "cpu-quick", {"train.label_smoothing": "0.1", "data.distinct_only": "true", "train.epochs": "3"}
    )
    assert cfg.train.label_smoothing == 0.1 and cfg.data.distinct_only is True and cfg.train.epochs == 3
    with pytest.raises(LiverscopeError, match="train.epochs"):
        load_config("cpu-quick", {"train.epochs": "many"})
    with pytest.raises(LiverscopeError, match="data.denoise"):
        load_config("cpu-quick", {"data.denoise": "3"})
    # exponents without a dot are numbers too (YAML 1.1, which PyYAML reads, leaves "1e-3" a string)
    cfg = load_config("cpu-quick", {"train.lr": "1e-3", "train.weight_decay": "5E-4"})
    assert cfg.train.lr == 1e-3 and cfg.train.weight_decay == 5e-4
    with pytest.raises(LiverscopeError, match="train.lr"):
        load_config("cpu-quick", {"train.lr": "fast"})


def test_cli_set_and_flags_map_to_settings():
    from liverscope.ui.cli_options import train_overrides

    out = train_overrides(
        epochs=2, distinct_only=True, crop_sector=None, settings=["train.lr=1e-3", "data.augment = light"]
    )
    assert out == {"train.epochs": 2, "data.distinct_only": True, "train.lr": "1e-3", "data.augment": "light"}
    with pytest.raises(LiverscopeError, match="KEY=VALUE"):
        train_overrides(settings=["train.lr"])


def test_choices_are_checked_before_any_work_and_name_the_valid_values():
    with pytest.raises(UsageError, match="choose one of: adam, adamw, sgd"):
        load_config("cpu-quick", {"train.optimizer": "adma"})
    with pytest.raises(UsageError, match="data.augment"):
        load_config(None, {"data.augment": "wild"})
    assert load_config(None, {"train.scheduler": "step"}).train.scheduler == "step"


def test_config_choices_agree_with_the_modules_that_act_on_them():
    from liverscope.data.augment import PRESETS
    from liverscope.data.preprocess import DENOISE_REGIONS
    from liverscope.inference.predict import BACKENDS, POOLS, PRECISIONS, SCHEDULES
    from liverscope.models.livernet import HEADS

    assert CHOICES["data.augment"] == PRESETS and CHOICES["model.head"] == HEADS
    assert CHOICES["predict.backend"] == BACKENDS and CHOICES["predict.precision"] == PRECISIONS
    assert CHOICES["predict.schedule"] == SCHEDULES and CHOICES["predict.pool"] == POOLS
    assert CHOICES["data.denoise_region"] == DENOISE_REGIONS


def test_a_users_yaml_file_is_read_and_builtin_recipes_need_no_checkout(tmp_path, monkeypatch):
    mine = tmp_path / "mine.yaml"
    mine.write_text("model:\n  name: resnet10t\ntrain:\n  epochs: 7\n")
    monkeypatch.chdir(tmp_path)  # far from the repository: built-ins come from the package itself
    assert load_config(mine).train.epochs == 7 and load_config("mine.yaml").model.name == "resnet10t"
    assert (
        "cpu-quick" in recipe_names()
        and load_config("cpu-quick").name == load_config("configs/cpu-quick.yaml").name
    )


def test_a_recipe_starts_from_its_base_and_states_only_what_it_changes(tmp_path):
    best, cpu_best = load_config("best").to_dict(), load_config("cpu-best").to_dict()
    assert (best["data"]["image_size"], best["train"]["epochs"]) == (224, 30)
    cpu_best["data"]["image_size"], cpu_best["train"]["epochs"] = 224, 30
    assert best == cpu_best  # everything else comes from cpu-best
    (tmp_path / "mine.yaml").write_text("base: sibling.yaml\ntrain:\n  lr: 3.0e-4\n")
    (tmp_path / "sibling.yaml").write_text("base: cpu-quick\ntrain:\n  lr: 1.0e-2\n  epochs: 7\n")
    mine = load_config(
        tmp_path / "mine.yaml"
    )  # a file's base is looked up beside it, then among the built-ins
    assert (mine.train.lr, mine.train.epochs, mine.model.name) == (
        3e-4,
        7,
        load_config("cpu-quick").model.name,
    )
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(UsageError, match="comes back to it"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "bad.yaml").write_text("base: [cpu-best]\n")
    with pytest.raises(UsageError, match="'base' names one recipe"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "missing.yaml").write_text("base: no-such-recipe\n")
    with pytest.raises(UsageError, match="recipe 'no-such-recipe' not found"):
        load_config(tmp_path / "missing.yaml")
