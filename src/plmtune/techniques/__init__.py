"""Built-in techniques. Importing a module registers it; add one import line per technique."""

from . import (  # noqa: F401
    adapters, back_translation, child_tuning, eda, ema, gradual_unfreeze, inject, llrd, lora, mixout, noisytune,
    prompt, rdrop, reinit,
)
