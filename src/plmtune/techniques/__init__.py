"""Built-in techniques. Importing a module registers it; add one import line per technique."""

from . import child_tuning, ema, gradual_unfreeze, inject, llrd, lora, mixout, noisytune, rdrop, reinit  # noqa: F401
