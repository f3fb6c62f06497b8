"""Cost of LiST's student step: meta re-weighting vs a plain (equal-weight) pseudo-label step.

The LiST model (prompt + adapters on the frozen bundled all-MiniLM-L6-v2) trains on fixed-shape
batches of real SST-2 sentences with pseudo-labels, through the real loop and the real
PseudoLabelLoss hook; only the loss mode differs: `plain` (hard pseudo-labels, equal weights),
`kd_warmup` (teacher soft labels, equal weights), `reweighted` (meta re-weighting against a
labelled batch, as training runs it: one backward pass with per-example gradient captures) and
`reweighted_double_backward` (the same weights by reverse-over-reverse on the step's graph, the
route for models with parameters outside Linear/LayerNorm layers). Rounds interleave the modes.
Goal (LiST issue): ≤ 2.5× plain.

    python benchmarks/list_cost.py --steps 20 --repeats 3 --out benchmarks/results/list_cost.json
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
from plmtune.stages.self_training import SelfTrainingConfig  # noqa: E402
from plmtune.data import EncodedSplit  # noqa: E402
from plmtune.engine.loop import MetricLog, fit  # noqa: E402
from plmtune.assemble import prepare  # noqa: E402
from plmtune.data import TaskData  # noqa: E402
from plmtune.stages.self_training import PseudoLabelLoss  # noqa: E402
from plmtune.techniques import build_techniques  # noqa: E402

# mode: (re-weight, KD warm-up steps, one-backward route allowed)
MODES = {"plain": (False, 0, None), "kd_warmup": (False, 10**9, None), "reweighted": (True, 0, None),
         "reweighted_double_backward": (True, 0, False)}


class SoftPad(FixedPad):
    def __call__(self, items):
        batch = super().__call__(items)
        batch["soft_labels"] = torch.nn.functional.one_hot(batch["labels"], 2).float() * 0.8 + 0.1
        return batch


def run(mode: str, rows: list[dict], args) -> list[float]:
    reweight, warmup, one_backward = MODES[mode]
    recipe = load_recipe("prompt_adapters", [f"train.max_steps={args.steps}", f"train.batch_size={args.batch}",
                                             "train.eval_every=1000"])
    torch.manual_seed(0)
    # the assembler, on in-memory rows; seeded above, so it does not seed again
    prepared = prepare(recipe, TaskData("sst2", Path("."), {"train": rows}, None, 2, False), 0, seed_rng=False)
    model, splits, ctx, techniques = prepared.model, prepared.splits, prepared.ctx, build_techniques(recipe)
    encoded = EncodedSplit(splits["train"], ctx.tokenizer, args.length)
    loader = torch.utils.data.DataLoader(encoded, batch_size=args.batch, shuffle=False, collate_fn=SoftPad(args.length))
    labelled = torch.utils.data.DataLoader(encoded, batch_size=SelfTrainingConfig().labelled_batch_size, shuffle=True, collate_fn=SoftPad(args.length))
    loss = PseudoLabelLoss(dataclasses.replace(SelfTrainingConfig(), reweight=reweight), warmup, labelled, one_backward)
    first, last = StepClock(), StepClock()
    fit(model, [first, *techniques, loss, last], ctx, loader, None, recipe.train, MetricLog(None))
    return [b - a for a, b in zip(last.times, last.times[1:])][args.skip:]


def main() -> None:
    parser = step_timing_parser(__doc__)
    args = parser.parse_args()
    rows = texts(args.steps * args.batch)
    samples: dict[str, list[float]] = {m: [] for m in MODES}
    for round_ in range(args.repeats):
        for mode in MODES:
            steps = run(mode, rows, args)
            samples[mode] += steps
            print(f"round {round_ + 1}/{args.repeats} {mode}: median {statistics.median(steps):.4f} s/step",
                  file=sys.stderr, flush=True)
    base = statistics.median(samples["plain"])
    results = {}
    print(f"\n{args.batch} x {args.length} tokens, {args.steps} steps x {args.repeats} rounds, device "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}\n")
    print("| student step | median s/step | IQR (s) | vs plain |")
    print("|---|---|---|---|")
    for mode, values in samples.items():
        q = statistics.quantiles(values, n=4)
        med = statistics.median(values)
        results[mode] = {"median_s": med, "q1_s": q[0], "q3_s": q[2], "ratio_vs_plain": med / base, "n": len(values)}
        print(f"| {mode} | {med:.4f} | {q[0]:.4f}–{q[2]:.4f} | {med / base:.2f}× |")
    write_results(args.out, args, results, samples)


if __name__ == "__main__":
    main()
