"""Built-in techniques. Importing a module registers it; add one import line per technique."""

from . import llrd  # noqa: F401
