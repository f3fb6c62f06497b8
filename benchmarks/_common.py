"""Helpers shared by the timing benchmarks: fixed-shape real batches, a fresh model, a step clock."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from plmtune.models import SequenceClassifier, load_backbone
from plmtune.technique import Technique

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.jsonl"


def step_timing_parser(doc: str):
    """The arguments every step-timing benchmark takes (rounds of steps on fixed-shape batches)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps dropped from each round")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--out", type=Path)
    return parser


def write_results(path: Path | None, args, rows: dict, raw: dict) -> None:
    """Save a benchmark's summary rows with its raw samples, arguments, versions and machine."""
    from plmtune.provenance import machine, versions

    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": rows, "raw": raw,
                                "versions": versions(), "machine": machine()}, indent=2) + "\n")


class FixedPad:
    """Pads every batch to the same length, so that all engines see identical shapes."""

    def __init__(self, length: int):
        self.length = length

    def __call__(self, items):
        def pad(key, value):
            return torch.tensor([it[key] + [value] * (self.length - len(it[key])) for it in items])

        return {"input_ids": pad("input_ids", 0), "attention_mask": pad("attention_mask", 0),
                "token_type_ids": pad("token_type_ids", 0), "labels": torch.tensor([it["labels"] for it in items])}


def texts(n: int) -> list[dict]:
    if SHARED.is_file():
        rows = [json.loads(line) for line in SHARED.read_text().splitlines()[:n]]
    else:
        from plmtune.demo import write_demo_data

        folder = write_demo_data(Path("/tmp/plmtune-bench-data"))
        rows = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
        rows = [{"text": r["text"], "label": int(r["label"] == "positive")} for r in (rows * (n // len(rows) + 1))[:n]]
    return rows


def fresh_model(seed: int):
    torch.manual_seed(seed)
    _, encoder = load_backbone("minilm")
    return SequenceClassifier(encoder, 2)


class StepClock(Technique):
    """Time stamps through the loop's own hooks: the fit start and every step end."""

    def __init__(self):
        super().__init__(None)
        self.started, self.times = 0.0, []

    def on_fit_start(self, ctx):
        self.started, self.times = time.perf_counter(), []

    def on_step_end(self, ctx):
        self.times.append(time.perf_counter())


