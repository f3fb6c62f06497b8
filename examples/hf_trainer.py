"""A plain transformers.Trainer script that uses plmtune's techniques through plmtune.hf.TechniqueTrainer.

    python examples/hf_trainer.py --data few/sst2/16-13 --out runs/hf-example

Reads a task folder's train/dev/test JSONL files ({"text": ..., "label": ...}, optionally "text_pair")
with `datasets`, takes the labels from the data, and fine-tunes AutoModelForSequenceClassification
on the bundled all-MiniLM-L6-v2 (offline) with NoisyTune, LLRD, ChildTuning-D, R-Drop and EMA.
The Trainer counts the optimiser steps, so the schedule follows --batch-size, --grad-accum and the
number of devices; on a machine with a GPU it trains there. With a dev split it evaluates after
every epoch (with EMA's weights); then it prints the test accuracy.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainingArguments,
    )

    from plmtune.hf import TechniqueTrainer
    from plmtune.models import resolve_backbone

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="a folder with train.jsonl (and dev.jsonl, test.jsonl)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--max-test", type=int, default=0, help="score at most this many test rows (0: all)")
    args = parser.parse_args()

    files = {split: str(Path(args.data) / f"{split}.jsonl") for split in ("train", "dev", "test")
             if (Path(args.data) / f"{split}.jsonl").is_file()}
    data = load_dataset("json", data_files=files)
    labels = data["train"]["label"]
    if isinstance(labels[0], str):  # label names: ids in sorted order, the same in every split
        names = sorted(set(labels))
        ids = {name: i for i, name in enumerate(names)}
        data = data.map(lambda row: {"label": ids[row["label"]]})
    else:
        names = [str(i) for i in range(max(labels) + 1)]
    print(f"labels: {len(names)}")

    path = resolve_backbone("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})

    def tokenize(rows):
        return tokenizer(rows["text"], rows.get("text_pair"), truncation=True, max_length=128)

    data = data.map(tokenize, batched=True).rename_column("label", "labels")
    if args.max_test and "test" in data:
        data["test"] = data["test"].select(range(min(args.max_test, len(data["test"]))))
    dev = data.get("dev")

    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    training = TrainingArguments(
        output_dir=args.out, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        num_train_epochs=args.epochs, learning_rate=5e-5, weight_decay=0.01, warmup_steps=0.1, max_grad_norm=1.0,
        eval_strategy="epoch" if dev is not None else "no", save_strategy="no", logging_strategy="epoch",
        report_to=[], disable_tqdm=True, seed=args.seed)
    trainer = TechniqueTrainer(
        model=model, args=training, train_dataset=data["train"], eval_dataset=dev, processing_class=tokenizer,
        compute_metrics=accuracy,
        techniques=["noisytune", {"name": "llrd", "decay": 0.9}, {"name": "child_tuning", "mode": "D", "reserve_p": 0.3},
                    {"name": "rdrop", "alpha": 1.0}, {"name": "ema", "decay": 0.9}])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if losses:
        print(f"training loss first {losses[0]:.4f} last {losses[-1]:.4f}")
    for entry in trainer.state.log_history:
        if "eval_accuracy" in entry:
            print(f"epoch {entry['epoch']:.0f} dev accuracy {entry['eval_accuracy']:.4f}")
    test = data.get("test", dev)
    if test is not None:
        predictions = trainer.predict(test)  # after training the model holds EMA's weights, as in plmtune
        print(f"test accuracy {accuracy(predictions)['accuracy']:.4f}")


if __name__ == "__main__":
    main()
