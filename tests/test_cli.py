"""Every CLI command answers --help; the demo runs end to end on phantoms."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from liverscope.ui.cli import app

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
    assert {
        "demo",
        "train",
        "predict",
        "models",
        "audit",
        "cv",
        "evaluate",
        "explain",
        "segment",
        "export",
        "serve",
    } <= names
    assert {p[1] for p in _commands(app) if len(p) == 2 and p[0] == "segment"} == {
        "pseudo",
        "train",
        "predict",
        "score",
    }


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


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_not_when_quiet(monkeypatch):
    from liverscope import utils

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert list(utils.progress(range(5), "files")) == [0, 1, 2, 3, 4] and sys.stderr.getvalue() == ""
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert list(utils.progress(iter(range(5)), "files", total=5)) == [0, 1, 2, 3, 4]
    assert "files" in term.getvalue()  # the bar was drawn on stderr
    utils.set_progress(False)
    try:
        quiet = _Terminal()
        monkeypatch.setattr(sys, "stderr", quiet)
        assert list(utils.progress(range(5), "files")) == [0, 1, 2, 3, 4] and quiet.getvalue() == ""
    finally:
        utils.set_progress(True)


def test_quiet_and_verbose_set_the_package_logger(tmp_path):
    from liverscope.utils import logger

    for flags, level in ((["-q"], logging.WARNING), ([], logging.INFO), (["-v"], logging.DEBUG)):
        res = runner.invoke(app, [*flags, "models"])
        assert res.exit_code == 0 and logger.level == level, (flags, res.output)
    runner.invoke(app, ["models"])


def test_usage_errors_exit_2_before_any_work_and_list_the_choices(tmp_path):
    res = runner.invoke(app, ["train", str(tmp_path / "missing"), "--optimizer", "adma"])
    assert res.exit_code == 2 and "adamw" in res.output and "does not exist" not in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "missing"), "--model", "resnet99"])
    assert res.exit_code == 2 and "resnet10t" in res.output and "does not exist" not in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "missing"), "--set", "train.scheduler=sometimes"])
    assert res.exit_code == 2 and "cosine" in res.output
    res = runner.invoke(app, ["train", "--help"])
    assert "adam|adamw|sgd" in res.output.replace(" ", "")


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("liverscope ")


def _snapshot(folder):
    from liverscope.utils import file_sha256

    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_evaluate_writes_outside_the_run_unless_asked(trained_run, phantom_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(trained_run)
    res = runner.invoke(app, ["evaluate", str(trained_run)])
    assert res.exit_code == 0, res.output
    report = tmp_path / "eval" / trained_run.name / "report"
    assert (report / "report.html").exists() and (report / "confusion_matrix.png").exists()
    res = runner.invoke(
        app,
        ["evaluate", str(trained_run), str(phantom_dir), "--out", str(tmp_path / "ext"), "--device", "cpu"],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ext" / "metrics.json").exists() and (tmp_path / "ext" / "report.html").exists()
    assert _snapshot(trained_run) == before  # nothing written into the run
    res = runner.invoke(app, ["evaluate", str(trained_run), "--out", "x", "--in-run"])
    assert res.exit_code == 2


def test_evaluate_says_why_when_no_image_can_be_predicted(trained_run, tmp_path):
    """A manifest whose files are all missing: a clear error naming the files, not a crash on an empty batch."""
    manifest = tmp_path / "lost.csv"
    manifest.write_text("path,label\nnowhere/a.png,F0\nnowhere/b.png,F1\n")
    res = runner.invoke(app, ["evaluate", str(trained_run), str(manifest), "--out", str(tmp_path / "ev")])
    assert res.exit_code != 0 and "none of its 2 images could be predicted" in res.output, res.output
    assert "a.png" in res.output


def test_models_says_cpu_friendly_once_per_model():
    from liverscope.models import get_spec, list_models

    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.output.splitlines() if line.strip()}
    assert set(lines) == set(list_models())
    for name, line in lines.items():
        assert line.count("CPU-friendly") == (1 if get_spec(name).small else 0), line


def test_recipe_help_lists_every_shipped_recipe():
    import re

    from liverscope.config import recipe_names
    from liverscope.ui.cli_options import RECIPES_HELP

    shipped = sorted(
        p.stem
        for p in (Path(__file__).resolve().parents[1] / "src" / "liverscope" / "recipes").glob("*.yaml")
    )
    assert recipe_names() == shipped and "lesions" in shipped
    for command in ("train", "cv", "demo"):
        res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"})
        text = re.sub(r"[\s│]+", " ", res.output)
        assert all(name in text for name in shipped), (command, text)
    assert all(name in RECIPES_HELP for name in shipped)


def test_docs_give_the_output_folders_the_commands_use():
    docs = Path(__file__).resolve().parents[1] / "docs"
    explain, segment = (docs / "explain.md").read_text(), (docs / "segment.md").read_text()
    assert "RUN_DIR/explain" not in explain and "runs/quick/explain" not in explain
    assert "`explain/RUN_NAME/`" in explain
    assert "default `RUN_DIR/pseudo_masks/`" not in segment and "default `pseudo-masks/RUN_NAME/`" in segment
    # ... which are the defaults the command line names
    assert "explain/RUN_NAME" in runner.invoke(app, ["explain", "--help"], env={"COLUMNS": "250"}).output
    assert (
        "pseudo-masks/RUN_NAME"
        in runner.invoke(app, ["segment", "pseudo", "--help"], env={"COLUMNS": "250"}).output
    )
