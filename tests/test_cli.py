"""Every CLI command answers --help; the demo runs end to end on phantoms."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from liverscope.cli import app

runner = CliRunner()


def _commands(typer_app, prefix=()):
    import typer.main

    group = typer.main.get_command(typer_app)
    out = []

    def walk(cmd, path):
        out.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + (name,))

    walk(group, tuple(prefix))
    return out


@pytest.mark.parametrize("path", _commands(app), ids=lambda p: " ".join(p) or "liverscope")
def test_help_for_every_command(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_main_commands_registered():
    names = {p[0] for p in _commands(app) if p}
    assert {"demo", "train", "predict", "models", "audit", "cv", "evaluate", "explain", "segment", "export", "serve"} <= names
    assert {p[1] for p in _commands(app) if len(p) == 2 and p[0] == "segment"} == {"pseudo", "train", "predict", "score"}


def test_train_bad_data_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "missing"), "--out-dir", str(tmp_path)])
    assert result.exit_code == 1  # a failure while running (exit 2 is kept for usage errors)
    assert "does not exist" in result.output


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    result = runner.invoke(app, ["demo", "--out-dir", str(tmp_path), "--epochs", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "test: accuracy" in result.output
    assert (tmp_path / "demo" / "model.safetensors").exists()
    assert (tmp_path / "demo" / "demo_predictions.csv").exists()
    assert (tmp_path / "phantoms" / "F4").is_dir()
