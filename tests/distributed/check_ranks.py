"""Run under `torchrun --nproc_per_node 2` (gloo, CPU): checks that randomness agrees across ranks.

Writes OUT/rank-<r>.json with checksums of NoisyTune's noise, ChildTuning-F's masks at two steps
and ChildTuning-D's Fisher mask (computed on different data per rank, summed across ranks), plus
rank 0's single-process Fisher mask over all ranks' data, for the test to compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from plmtune.models import SequenceClassifier, tiny_bert
from plmtune.loading import load_recipe
from plmtune.technique import TrainContext
from plmtune.techniques.child_tuning import ChildTuning, ChildTuningConfig, fisher_information, top_fraction_masks
from plmtune.techniques.noisytune import NoisyTuneConfig, add_noise


def digest(tensors) -> float:
    return float(sum((t.double() * (i + 1)).sum() for i, t in enumerate(tensors)))


def batches(rank: int) -> list[dict]:
    g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    ids = torch.randint(5, 200, (2, 4, 8), generator=g)
    return [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": torch.randint(0, 2, (4,), generator=g)}
            for x in ids]


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    torch.manual_seed(rank)  # the global RNG differs per rank: the techniques must not depend on it
    model = SequenceClassifier(tiny_bert(vocab_size=200, hidden=32, num_layers=2, seed=0, dropout=0.0), 2, dropout=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    add_noise(model, NoisyTuneConfig(lam=0.15), seed=13)
    noise = digest([p.detach() - b for p, b in zip(model.parameters(), before)])

    ctx = TrainContext(recipe=load_recipe("baseline"), seed=13)
    technique = ChildTuning(ChildTuningConfig(mode="F", reserve_p=0.3))
    technique.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, ctx)
    masks = []
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        technique.masks_for_step()
        for p in model.parameters():
            technique.mask_randomly(p)
        masks.append(digest([p.grad for p in model.parameters()]))

    fisher = fisher_information(model, batches(rank), accelerator)
    mask = top_fraction_masks(fisher, 0.3)
    record = {"rank": rank, "world": accelerator.num_processes, "noise": noise, "f_masks": masks,
              "d_mask": digest(list(mask.values())), "fisher_sum": digest(list(fisher.values()))}
    if rank == 0:
        everything = [b for r in range(accelerator.num_processes) for b in batches(r)]
        local = fisher_information(model, everything, None)
        record["single_process_fisher_sum"] = digest(list(local.values()))
        record["single_process_d_mask"] = digest(list(top_fraction_masks(local, 0.3).values()))
    (out / f"rank-{rank}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
