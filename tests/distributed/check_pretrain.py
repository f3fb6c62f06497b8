"""Run under `torchrun --nproc_per_node 2` (gloo, CPU): pre-training's held-out loss, the number its
stop rule compares, must be one number on every rank although each rank reads only its shard.

Writes OUT/rank-<r>.json with the value each rank computed and, from rank 0, the value one process
computes over the whole held-out set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from plmtune.mlm import MaskingCollator, mlm_head_for
from plmtune.models import tiny_bert
from plmtune.stages.pretrain import MaskedLM, _heldout_loss


class Vocabulary:
    """What the masking collator reads from a tokenizer, for a 100-token vocabulary."""

    all_special_ids, pad_token_id, mask_token_id = [0, 1, 2, 3], 0, 3

    def __len__(self) -> int:
        return 100


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    encoder = tiny_bert(vocab_size=100, seed=0, dropout=0.0)
    model = MaskedLM(encoder, mlm_head_for(encoder))
    g = torch.Generator().manual_seed(0)
    items = [{"input_ids": [1, *torch.randint(4, 100, (int(n),), generator=g).tolist(), 2], "index": i}
             for i, n in enumerate(torch.randint(3, 12, (8,), generator=g))]
    loader = torch.utils.data.DataLoader(items, batch_size=2, collate_fn=MaskingCollator(Vocabulary(), 0.3,
                                                                                          mode="static", copies=1))
    whole = _heldout_loss(model, loader, None) if accelerator.is_main_process else None  # before prepare: all of it
    value = _heldout_loss(accelerator.prepare(model), accelerator.prepare(loader), accelerator)
    (out / f"rank-{accelerator.process_index}.json").write_text(json.dumps({"value": value, "whole": whole}))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
