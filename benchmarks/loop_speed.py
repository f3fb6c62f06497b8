"""Step time of the plmtune loop vs a bare PyTorch loop vs the Hugging Face Trainer.

Same model (the bundled all-MiniLM-L6-v2 + our classification head), same batches (real SST-2
sentences padded to a fixed length, so batch order cannot matter), same optimiser (fused AdamW),
schedule (linear warm-up/decay), gradient clipping and step count. The engines run interleaved,
`--repeats` rounds each, so drift on a shared machine hits all of them alike. Step times are
taken at every step end (a plmtune hook, a Trainer callback, a line in the bare loop); the first
`--skip` steps of each round are warm-up and are dropped.

    python benchmarks/loop_speed.py --steps 30 --repeats 3 --out benchmarks/results/loop_speed.json

Prints a Markdown table: median step time (s), interquartile range, and throughput relative to
the bare loop (>1.0 = faster than bare).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import FixedPad, StepClock, fresh_model, texts, write_results  # noqa: E402

from plmtune.loading import load_recipe  # noqa: E402
from plmtune.data import EncodedSplit  # noqa: E402
from plmtune.engine.loop import MetricLog, fit  # noqa: E402
from plmtune.engine.optim import default_param_groups, linear_schedule, make_adamw  # noqa: E402
from plmtune.models import load_backbone  # noqa: E402
from plmtune.technique import TrainContext  # noqa: E402

def run_plmtune(loader, args) -> list[float]:
    recipe = load_recipe("baseline", [f"train.max_steps={args.steps}", f"train.batch_size={args.batch}",
                                      f"train.bf16={str(args.bf16).lower()}"])
    model = fresh_model(0)
    clock = StepClock()
    ctx = TrainContext(recipe=recipe, seed=0, num_labels=2)
    fit(model, [clock], ctx, loader, None, recipe.train, MetricLog(None))
    return clock.times


def run_bare(loader, args) -> list[float]:
    model = fresh_model(0)
    model.train()
    opt = make_adamw(default_param_groups(model, 1e-4, 0.01), 1e-4, fused=True)
    sched = linear_schedule(opt, int(0.1 * args.steps), args.steps)
    times = []
    step = 0
    while step < args.steps:
        for batch in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logits = model(**batch)["logits"]
            loss = F.cross_entropy(logits.float(), batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss.item()  # what any loop that logs its loss does
            step += 1
            times.append(time.perf_counter())
            if step >= args.steps:
                break
    return times


def run_hf(encoded, collate, args) -> list[float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class WithLoss(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, labels=None, **batch):
            logits = self.inner(**batch)["logits"]
            return {"loss": F.cross_entropy(logits.float(), labels), "logits": logits}

    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    targs = TrainingArguments(output_dir="/tmp/plmtune-hf-bench", max_steps=args.steps,
                              per_device_train_batch_size=args.batch, learning_rate=1e-4, weight_decay=0.01,
                              warmup_steps=int(0.1 * args.steps), lr_scheduler_type="linear",
                              max_grad_norm=1.0, optim="adamw_torch_fused", bf16=args.bf16, use_cpu=True,
                              save_strategy="no", report_to=[], logging_steps=args.steps, disable_tqdm=True,
                              dataloader_num_workers=0, remove_unused_columns=False, seed=0)
    trainer = Trainer(model=WithLoss(fresh_model(0)), args=targs, train_dataset=encoded, data_collator=collate,
                      callbacks=[Clock()])
    trainer.train()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps dropped from each round")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    tokenizer, _ = load_backbone("minilm")
    encoded = EncodedSplit(texts(args.steps * args.batch), tokenizer, args.length)
    collate = FixedPad(args.length)
    loader = torch.utils.data.DataLoader(encoded, batch_size=args.batch, shuffle=False, collate_fn=collate)
    engines = {"bare": lambda: run_bare(loader, args), "plmtune": lambda: run_plmtune(loader, args),
               "hf_trainer": lambda: run_hf(encoded, collate, args)}
    steps: dict[str, list[float]] = {name: [] for name in engines}
    for round_ in range(args.repeats):
        for name, engine in engines.items():
            stamps = engine()
            deltas = [b - a for a, b in zip(stamps, stamps[1:])][args.skip:]
            steps[name] += deltas
            print(f"round {round_ + 1}/{args.repeats} {name}: median {statistics.median(deltas):.4f} s/step",
                  file=sys.stderr, flush=True)
    bare = statistics.median(steps["bare"])
    rows = {}
    for name, values in steps.items():
        q = statistics.quantiles(values, n=4)
        med = statistics.median(values)
        rows[name] = {"median_s": med, "q1_s": q[0], "q3_s": q[2], "throughput_vs_bare": bare / med,
                      "n_steps": len(values)}
    print(f"\nbatch {args.batch} x {args.length} tokens, {args.steps} steps x {args.repeats} rounds "
          f"(first {args.skip} of each dropped), bf16={args.bf16}, torch threads {torch.get_num_threads()}\n")
    print("| engine | median s/step | IQR (s) | throughput vs bare |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['median_s']:.4f} | {r['q1_s']:.4f}–{r['q3_s']:.4f} | {r['throughput_vs_bare']:.3f}× |")
    write_results(args.out, args, rows, steps)

if __name__ == "__main__":
    main()
