"""The command line: its conventions (fast, in process) and end to end with the real bundled model and data (slow)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from math import comb

import pytest

from shared_data import shared_dataset
from plmtune import __version__
from plmtune.cli import build_parser, main


def plmtune(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "plmtune", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=900)


def binomial_p_value(successes: int, n: int, p: float = 0.5) -> float:
    """One-sided P(X >= successes) for X ~ Binomial(n, p)."""
    return sum(comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(successes, n + 1))


@pytest.fixture(scope="module")
def sst2_16_13(tmp_path_factory):
    out = tmp_path_factory.mktemp("few")
    proc = plmtune("data", "fewshot", shared_dataset("sst2"), out, "--k", 16, "--seeds", 13)
    assert proc.returncode == 0, proc.stderr
    return out / "16-13"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["baseline", "llrd"])
def test_run_on_sst2_k16_is_clearly_above_chance(sst2_16_13, tmp_path, recipe):
    out = tmp_path / recipe
    proc = plmtune("run", recipe, "--data", sst2_16_13, "--out", out, "--seed", 13)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    test = result["test"]
    assert test["n"] == 872
    correct = round(test["accuracy"] * test["n"])
    # The SST-2 dev set is 49% negative / 51% positive: the majority guess scores 0.509.
    assert test["accuracy"] > 0.58
    assert binomial_p_value(correct, test["n"]) < 1e-4
    assert set(test) >= {"accuracy", "macro_f1", "mcc", "f1_positive"}
    assert result["seed"] == 13 and result["recipe"]["name"] == recipe
    assert result["parameters"]["trainable"] == result["parameters"]["total"] > 22_000_000
    assert result["versions"]["torch"] and result["versions"]["transformers"]
    assert "commit" in (result["git"] or {"commit": None})
    assert result["train_seconds"] > 0 and result["dev"]["n"] == 32
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "train" for r in steps) == result["steps"] == 80


@pytest.mark.slow
def test_validate_reports_every_bad_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: baseline\ntrain: {lr: 3}\n")
    proc = plmtune("validate", "baseline", bad)
    assert proc.returncode == 2
    assert "baseline: ok" in proc.stdout
    assert "train.lr = 3.0 is out of range" in proc.stderr


@pytest.mark.slow
def test_show_applies_overrides():
    proc = plmtune("show", "llrd", "--set", "techniques.0.decay=0.7")
    assert proc.returncode == 0 and "decay: 0.7" in proc.stdout


@pytest.mark.slow
def test_bad_data_exits_2_with_one_paragraph_and_writes_nothing(tmp_path):
    data = tmp_path / "task"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b"}\n')
    out = tmp_path / "out"
    proc = plmtune("run", "baseline", "--data", data, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "train.jsonl, line 2, field 'label': missing field" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_fewshot_bad_seeds_and_unwritable_out(tmp_path):
    proc = plmtune("data", "fewshot", shared_dataset("sst2"), tmp_path / "o", "--seeds", "1,x")
    assert proc.returncode == 2 and "--seeds must be comma-separated integers" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_demo_runs_offline_and_writes_results(tmp_path):
    proc = plmtune("demo", "--out", tmp_path / "demo", "--seeds", "13")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert set(summary["results"]) == {"baseline", "llrd"}
    for name in ("baseline", "llrd"):
        assert summary["results"][name]["accuracy"][0] > 0.7
        assert f"{name:10s}" in proc.stdout
    assert (tmp_path / "demo" / "data" / "unlabeled.jsonl").is_file()


# --------------------------------------------------------------------------- conventions (fast, no training)

RESULT = {"task": "toy", "seed": 13, "test": {"accuracy": 0.75, "macro_f1": 0.7, "mcc": 0.5},
          "dev": {"accuracy": 0.8}, "best_epoch": 3, "train_seconds": 12.25}


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """`plmtune run` without training: records the recipe and the root logger's handlers it ran with."""
    seen = {}

    def run_recipe(recipe, data, out, **kwargs):
        seen.update(recipe=recipe, kwargs=kwargs, handlers=[type(h).__name__ for h in logging.getLogger().handlers])
        return dict(RESULT)

    monkeypatch.setattr("plmtune.run.run_recipe", run_recipe)
    seen["argv"] = ["run", "baseline", "--data", str(tmp_path), "--out", str(tmp_path / "out")]
    return seen


def test_version_prints_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"plmtune {__version__}\n"


@pytest.mark.parametrize(("argv", "level"), [
    (["run", "baseline", "--data", "d", "--out", "o"], None),
    (["-v", "run", "baseline", "--data", "d", "--out", "o"], logging.INFO),
    (["run", "baseline", "-v", "--data", "d", "--out", "o"], logging.INFO),
    (["-q", "run", "baseline", "--data", "d", "--out", "o"], logging.ERROR),
    (["run", "baseline", "--data", "d", "--out", "o", "--quiet"], logging.ERROR),
    (["-q", "run", "baseline", "-v", "--data", "d", "--out", "o"], logging.INFO),  # the last one wins
    (["-v", "data", "fewshot", "src", "out"], logging.INFO),
    (["data", "fewshot", "src", "out", "-q"], logging.ERROR),
])
def test_verbose_and_quiet_work_before_and_after_the_subcommand(argv, level):
    args = build_parser().parse_args(argv)
    assert getattr(args, "log_level", None) == level


def test_quiet_after_the_subcommand_runs(fake_run, capsys):
    assert main([*fake_run["argv"], "-q"]) == 0, capsys.readouterr().err


def _parsers(parser: argparse.ArgumentParser, prog: str = "plmtune"):
    """(prog, parser) for the top-level parser and every subcommand's, nested ones included."""
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, f"{prog} {choice.dest} has no help line"
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


def test_every_argument_has_help_and_shows_its_default():
    names = []
    for prog, parser in _parsers(build_parser()):
        names.append(prog)
        text = " ".join(parser.format_help().split())  # unwrapped
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{prog}: {action.option_strings or action.dest} has no help"
            if action.default is not None and action.default is not argparse.SUPPRESS and action.nargs != 0:
                assert f"(default: {action.default})" in text, f"{prog}: {action.dest}'s default is not shown"
    assert {"plmtune run", "plmtune data fewshot", "plmtune list"} <= set(names)


@pytest.mark.parametrize("command", ["run", "show"])
def test_data_field_options_become_recipe_overrides(fake_run, capsys, command):
    fields = ["--text-field", "sentence", "--text-pair-field", "hypothesis", "--label-field", "yes"]
    if command == "run":
        assert main([*fake_run["argv"], *fields]) == 0, capsys.readouterr().err
        data = fake_run["recipe"].data
        assert (data.text_field, data.text_pair_field, data.label_field) == ("sentence", "hypothesis", "yes")
    else:
        assert main(["show", "baseline", *fields]) == 0
        out = capsys.readouterr().out
        assert "text_field: sentence" in out and "label_field: 'yes'" in out  # 'yes' stays a string


def test_tune_takes_the_data_field_options(monkeypatch, tmp_path, capsys):
    seen = {}

    def tune(recipe, *args):
        seen["data"] = recipe.data
        return {"trials": [], "best_values": {}, "best_dev": 0.5, "final_test": None}

    monkeypatch.setattr("plmtune.tune.tune", tune)
    argv = ["tune", "baseline", "--data", str(tmp_path), "--out", str(tmp_path / "t"), "--budget", "1",
            "--label-field", "sentiment"]
    assert main(argv) == 0, capsys.readouterr().err
    assert seen["data"].label_field == "sentiment" and seen["data"].text_field == "text"


def test_list_without_an_argument_lists_all_three_under_headings(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    headings = [line for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["techniques:", "stages:", "recipes:"]
    section = {h: lines.index(h) for h in headings}
    assert section["techniques:"] < next(i for i, x in enumerate(lines) if x.split()[:1] == ["llrd"])
    assert section["stages:"] < next(i for i, x in enumerate(lines) if x.split()[:1] == ["finetune"]) \
        < section["recipes:"] < next(i for i, x in enumerate(lines) if x.split()[:1] == ["baseline"])
    assert main(["list", "recipes", "base*"]) == 0  # one list, as before: no heading
    assert capsys.readouterr().out.split()[0] == "baseline"


@pytest.mark.parametrize("save_model", [False, True])
def test_run_summary_names_best_epoch_train_time_and_model_folder(fake_run, capsys, save_model):
    assert main([*fake_run["argv"], *(["--save-model"] if save_model else [])]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "test accuracy 0.7500" in out and "at epoch 3" in out and "trained in 12.2 s" in out
    out_dir = fake_run["argv"][-1]
    assert (f"Model: {out_dir}/model" in out) == save_model
    assert out.rstrip().endswith(f"Wrote {out_dir}/result.json")


def test_log_lines_go_through_tqdm_while_a_command_runs_at_info(fake_run, capsys):
    assert main(["-v", *fake_run["argv"]]) == 0
    assert "_TqdmLoggingHandler" in fake_run["handlers"]
    assert "_TqdmLoggingHandler" not in [type(h).__name__ for h in logging.getLogger().handlers]  # put back
