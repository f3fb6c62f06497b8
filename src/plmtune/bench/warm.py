"""Imported once by a warm worker (plmtune.bench.zygote): what a run would import at its
start — torch, transformers, plmtune's run path and the peers' libraries — so that every run forked from
the server starts with them loaded. Nothing here runs anything or touches a device."""

from __future__ import annotations

import importlib

MODULES = (
    "torch", "numpy", "transformers", "safetensors.torch", "tokenizers", "accelerate", "yaml",
    "plmtune.cli", "plmtune.loading", "plmtune.run", "plmtune.assemble", "plmtune.models", "plmtune.data",
    "plmtune.stages", "plmtune.techniques", "plmtune.engine.loop", "plmtune.metrics", "plmtune.bench.peers",
    # the peers' and stages' libraries where they are installed (SetFit brings datasets and sentence-transformers)
    "sklearn.linear_model", "setfit", "peft",
)
loaded, missing = [], []
for name in MODULES:
    try:
        importlib.import_module(name)
        loaded.append(name)
    except ImportError:
        missing.append(name)
