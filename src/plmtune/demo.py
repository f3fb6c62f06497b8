"""`plmtune demo`: an offline end-to-end run on a small review dataset written by plmtune itself.

The dataset is composed from hand-written fragments (products, praise, complaints, and a
concessive pattern where the main clause decides the label, e.g. "Although the screen is sharp,
the battery dies before lunch." is negative). It is deterministic, needs no download, and is
small enough to train on a laptop CPU in a few minutes: 64 train, 64 dev, 240 test labelled
sentences over two classes, plus 300 unlabelled ones.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any

PRODUCTS = [
    "blender", "laptop", "phone", "kettle", "backpack", "headset", "camera", "vacuum cleaner", "desk lamp",
    "coffee maker", "keyboard", "tent", "rice cooker", "monitor", "e-reader", "toaster", "drill", "speaker",
    "smartwatch", "router", "printer", "mattress", "air fryer", "hair dryer", "office chair", "jacket",
    "running shoes", "frying pan", "tablet", "microwave",
]
PRAISE = [
    "works perfectly", "exceeded my expectations", "is worth every penny", "feels solid and well made",
    "arrived quickly and works great", "is the best purchase I made this year", "is easy to set up",
    "runs quietly", "looks beautiful on my desk", "has a battery that lasts for days",
    "does exactly what it promises", "is comfortable to use for hours", "has held up well after months",
    "makes my mornings easier", "is fast and reliable", "came with clear instructions",
    "is surprisingly light", "cleans up in seconds", "has excellent build quality", "still works like new",
    "impressed the whole family", "has a bright, sharp screen", "keeps everything organised",
    "is a joy to use", "heats up in no time",
]
COMPLAINTS = [
    "stopped working after a week", "is a complete waste of money", "feels cheap and flimsy",
    "arrived broken", "is far too loud", "overheats after ten minutes", "has a battery that dies before lunch",
    "broke the second time I used it", "is nothing like the pictures", "came with missing parts",
    "is painfully slow", "leaks all over the counter", "smells of burnt plastic", "keeps disconnecting",
    "was returned the same day", "gave me nothing but trouble", "has buttons that stick",
    "is uncomfortable after a few minutes", "scratches far too easily", "is impossible to set up",
    "disappointed me badly", "rattles whenever it runs", "fell apart within a month",
    "has a screen that is dim and blurry", "never heats up properly",
]
OPENERS = ["", "Honestly, ", "To be fair, ", "After a month, ", "In short, ", "Well, ", "So far, "]
POS_CLOSERS = ["", " I would buy it again.", " Highly recommended.", " Five stars.", " Very happy with it."]
NEG_CLOSERS = ["", " I want a refund.", " Avoid it.", " One star.", " Do not buy this."]

SIZES = {"train": 64, "dev": 64, "test": 240}
UNLABELED = 300


def _sentence(rng: random.Random, positive: bool) -> str:
    product = rng.choice(PRODUCTS)
    main = rng.choice(PRAISE if positive else COMPLAINTS)
    if rng.random() < 0.3:
        # Concessive: the subordinate clause says the opposite of the label.
        other = rng.choice(COMPLAINTS if positive else PRAISE)
        return f"Although the {product} {other}, it {main}."
    closer = rng.choice(POS_CLOSERS if positive else NEG_CLOSERS)
    return _cap(f"{rng.choice(OPENERS)}the {product} {main}.{closer}")


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def write_demo_data(out: Path, seed: int = 0) -> Path:
    """Write train/dev/test/unlabeled JSONL files (labels: negative, positive) under `out`."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    needed = sum(SIZES.values()) + UNLABELED
    while len(rows) < needed:
        positive = len(rows) % 2 == 0
        text = _sentence(rng, positive)
        if text not in seen:
            seen.add(text)
            rows.append({"text": text, "label": "positive" if positive else "negative"})
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, size in SIZES.items():
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for row in rows[start:start + size]:
                f.write(json.dumps(row) + "\n")
        start += size
    with (out / "unlabeled.jsonl").open("w", encoding="utf-8") as f:
        for row in rows[start:]:
            f.write(json.dumps({"text": row["text"]}) + "\n")
    return out


DEMO_RECIPES = ("baseline", "llrd")
DEMO_OVERRIDES = ["train.epochs=8"]


def run_demo(out: Path, seeds: list[int], progress: bool = False) -> dict[str, Any]:
    """Train baseline and LLRD on the demo data over `seeds`; print a table and write results."""
    from .loading import load_recipe
    from .run import run_recipe
    from .rundir import write_json_atomic

    data = write_demo_data(out / "data")
    results: dict[str, list[dict]] = {}
    for name in DEMO_RECIPES:
        recipe = load_recipe(name, DEMO_OVERRIDES)
        for seed in seeds:
            print(f"[demo] {name}, seed {seed} ...", flush=True)
            result = run_recipe(recipe, data, out / "runs" / name / f"seed-{seed}", seed=seed, progress=progress,
                                    overwrite=True)
            results.setdefault(name, []).append(result)
    summary = {}
    print(f"\nDemo: {len(seeds)} seeds on {data} (test n={SIZES['test']})")
    print(f"{'recipe':10s} {'accuracy':>16s} {'macro-F1':>16s} {'worst acc':>10s} {'train s':>8s}")
    for name, runs in results.items():
        acc = [r["test"]["accuracy"] for r in runs]
        f1 = [r["test"]["macro_f1"] for r in runs]
        secs = [r["train_seconds"] for r in runs]
        summary[name] = {"accuracy": acc, "macro_f1": f1, "train_seconds": secs}
        sd = statistics.stdev if len(acc) > 1 else (lambda _: 0.0)
        print(f"{name:10s} {statistics.mean(acc):8.4f} ± {sd(acc):.4f} {statistics.mean(f1):8.4f} ± {sd(f1):.4f} "
              f"{min(acc):10.4f} {statistics.mean(secs):8.1f}")
    write_json_atomic(out / "demo_results.json", {"seeds": seeds, "overrides": DEMO_OVERRIDES, "results": summary})
    print(f"\nWrote {out / 'demo_results.json'} and per-run folders under {out / 'runs'}")
    return summary
