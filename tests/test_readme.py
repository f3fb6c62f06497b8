"""The README's quick start runs as written: train on your own CSV, predict, evaluate, transformers, export."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared_data import shared_dataset

README = Path(__file__).resolve().parents[1] / "README.md"


def block(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- quickstart:{name} -->\s*```\w+\n(.*?)```\s*<!-- /quickstart:{name} -->", text, re.S)
    assert match, f"README has no quickstart:{name} block"
    return match.group(1)


def _my_task(folder: Path) -> None:
    """A CSV task with the README's column names, from real SST-2 rows (16 per class, 100 test rows)."""
    source = shared_dataset("sst2")
    rows = [json.loads(x) for x in (source / "train.jsonl").read_text().splitlines()[:1000]]
    names = {0: "negative", 1: "positive"}
    picked = [r for r in rows if r["label"] == 0][:16] + [r for r in rows if r["label"] == 1][:16]
    test = [json.loads(x) for x in (source / "dev.jsonl").read_text().splitlines()[:100]]
    folder.mkdir()
    for split, part in (("train", picked), ("test", test)):
        with open(folder / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["review", "sentiment"])
            writer.writerows([(r["text"], names[r["label"]]) for r in part])


@pytest.mark.slow
def test_the_readme_quickstart_commands_run_as_written(tmp_path):
    _my_task(tmp_path / "my_task")
    (tmp_path / "new_reviews.txt").write_text("a fine film\na dull, tedious mess\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = block("bash").replace("python -c", f"{sys.executable} -c")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "predictions.csv", newline="") as f:
        predictions = list(csv.DictReader(f))
    assert [r["text"] for r in predictions] == ["a fine film", "a dull, tedious mess"]
    assert {r["label"] for r in predictions} <= {"negative", "positive"}
    assert "p_negative" in predictions[0] and "p_positive" in predictions[0]
    assert "'label': 'positive'" in proc.stdout or "'label': 'negative'" in proc.stdout  # the pipeline's class names
    assert (tmp_path / "runs" / "mine" / "onnx" / "model.onnx").is_file()


@pytest.mark.slow
def test_the_readme_python_quickstart_runs_as_written(tmp_path):
    _my_task(tmp_path / "my_task")
    proc = subprocess.run([sys.executable, "-c", block("python")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"0\.\d+ \['(negative|positive)', '(negative|positive)'\]", lines[0]), lines
    assert "['negative', 'positive']" in lines[-1]
    assert (tmp_path / "my_model" / "plmtune.json").is_file()
