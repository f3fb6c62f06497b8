"""Step-time cost of each technique against plain fine-tuning, measured in one run.

Every recipe trains the bundled all-MiniLM-L6-v2 on the same fixed-shape batches of real SST-2
sentences (16 x 64 tokens) for the same number of steps, through the real plmtune loop; rounds
are interleaved so machine drift hits every recipe alike. Step times come from a clock technique
(the loop's own step hook). ChildTuning-D's one-off Fisher pass is timed separately (between the
fit start and the first step) and reported against one epoch of training on the same data.

    python benchmarks/technique_cost.py --steps 20 --repeats 3 --out benchmarks/results/technique_cost.json

Prints a Markdown table: median step time, IQR, and the ratio to the baseline's median.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys

from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import FixedPad, StepClock, step_timing_parser, texts, write_results  # noqa: E402

from plmtune.loading import load_recipe  # noqa: E402
from plmtune.data import EncodedSplit  # noqa: E402
from plmtune.engine.loop import MetricLog, fit  # noqa: E402
from plmtune.models import SequenceClassifier, load_backbone  # noqa: E402
from plmtune.assemble import prepare  # noqa: E402
from plmtune.data import TaskData  # noqa: E402
from plmtune.technique import TrainContext  # noqa: E402
from plmtune.techniques import build_techniques  # noqa: E402

RECIPES = ["baseline", "child_tuning_f", "child_tuning_d", "noisytune", "llrd", "ema", "reinit", "rdrop",
           "mixout", "lora", "gradual_unfreeze", "pooling_concat_cls", "pooling_cnn", "adapters", "prompt",
           "prompt_adapters"]


def run(name: str, rows: list[dict], args) -> dict:
    recipe = load_recipe(name, [f"train.max_steps={args.steps}", f"train.batch_size={args.batch}",
                                "train.eval_every=1000"])
    torch.manual_seed(0)
    # Built as `plmtune run` builds it, so data-side techniques (prompt templates) apply too.
    # the assembler, on in-memory rows; seeded above, so it does not seed again
    prepared = prepare(recipe, TaskData("sst2", Path("."), {"train": rows}, None, 2, False), 0, seed_rng=False)
    model, splits, ctx, techniques = prepared.model, prepared.splits, prepared.ctx, build_techniques(recipe)
    encoded = EncodedSplit(splits["train"][:len(rows)], ctx.tokenizer, args.length)  # no augmented extras
    loader = torch.utils.data.DataLoader(encoded, batch_size=args.batch, shuffle=False,
                                         collate_fn=FixedPad(args.length))
    first, last = StepClock(), StepClock()
    fit(model, [first, *techniques, last], ctx, loader, None, dataclasses.replace(recipe.train), MetricLog(None))
    steps = [b - a for a, b in zip(last.times, last.times[1:])]
    return {"steps": steps[args.skip:], "setup_s": last.started - first.started}


def mask_overhead(loader, rounds: int = 15) -> dict:
    """The optimiser step alone, plain fused AdamW vs the same inside ChildTuning-F's wrapper.

    Whole-step timings on a shared 2-core machine wander by ~10%, more than the mask costs; this
    isolates the added work (drawing and applying the masks) on real gradients of the real model.
    """
    import time

    import torch.nn.functional as F

    from plmtune.engine.optim import default_param_groups, make_adamw
    from plmtune.techniques.child_tuning import ChildTuning, ChildTuningConfig

    torch.manual_seed(0)
    _, encoder = load_backbone("minilm")
    model = SequenceClassifier(encoder, 2, "mean")
    batch = next(iter(loader))
    ctx = TrainContext(recipe=load_recipe("baseline"), seed=0)
    plain = make_adamw(default_param_groups(model, 1e-5, 0.01), 1e-5, fused=True)
    wrapped = ChildTuning(ChildTuningConfig(mode="F", reserve_p=0.3)).wrap_optimizer(
        make_adamw(default_param_groups(model, 1e-5, 0.01), 1e-5, fused=True), model, ctx)
    times: dict[str, list[float]] = {"adamw": [], "adamw+child_tuning_f": []}
    for _ in range(rounds):
        for name, opt in (("adamw", plain), ("adamw+child_tuning_f", wrapped)):
            opt.zero_grad()
            F.cross_entropy(model(**batch)["logits"], batch["labels"]).backward()
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values[2:]) for name, values in times.items()}


def main() -> None:
    parser = step_timing_parser(__doc__)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args()
    names = args.recipes.split(",")

    tokenizer, _ = load_backbone("minilm")
    rows = texts(args.steps * args.batch)
    encoded = EncodedSplit(rows, tokenizer, args.length)  # for the optimiser-only ChildTuning timing
    loader = torch.utils.data.DataLoader(encoded, batch_size=args.batch, shuffle=False,
                                         collate_fn=FixedPad(args.length))
    samples = {n: {"steps": [], "setup_s": []} for n in names}
    for round_ in range(args.repeats):
        for name in names:
            out = run(name, rows, args)
            samples[name]["steps"] += out["steps"]
            samples[name]["setup_s"].append(out["setup_s"])
            print(f"round {round_ + 1}/{args.repeats} {name}: median {statistics.median(out['steps']):.4f} s/step, "
                  f"setup {out['setup_s']:.2f} s", file=sys.stderr, flush=True)
    base = statistics.median(samples["baseline"]["steps"]) if "baseline" in samples else None
    epoch_s = base * args.steps if base else None
    rows = {}
    for name, s in samples.items():
        q = statistics.quantiles(s["steps"], n=4)
        med = statistics.median(s["steps"])
        setup = statistics.median(s["setup_s"])
        rows[name] = {"median_s": med, "q1_s": q[0], "q3_s": q[2], "ratio_vs_baseline": med / base if base else None,
                      "setup_s": setup, "setup_vs_epoch": setup / epoch_s if epoch_s else None,
                      "n_steps": len(s["steps"])}
    print(f"\n{args.batch} x {args.length} tokens, {args.steps} steps x {args.repeats} rounds "
          f"(first {args.skip} of each dropped), torch threads {torch.get_num_threads()}; "
          f"one epoch = {args.steps} baseline steps\n")
    print("| recipe | median s/step | IQR (s) | step time vs baseline | fit-start work (s) | vs one epoch |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['median_s']:.4f} | {r['q1_s']:.4f}–{r['q3_s']:.4f} | {r['ratio_vs_baseline']:.3f}× "
              f"| {r['setup_s']:.2f} | {r['setup_vs_epoch']:.2f}× |")
    overhead = mask_overhead(loader)
    added = overhead["adamw+child_tuning_f"] - overhead["adamw"]
    print(f"\nOptimiser step alone (median of 13): fused AdamW {1000 * overhead['adamw']:.1f} ms, "
          f"with ChildTuning-F masks {1000 * overhead['adamw+child_tuning_f']:.1f} ms: the masks add "
          f"{1000 * added:.1f} ms = {100 * added / base:.1f}% of the baseline's median training step.")
    rows["_mask_overhead"] = {**overhead, "added_s": added, "added_vs_step": added / base}
    write_results(args.out, args, rows, samples)

if __name__ == "__main__":
    main()
