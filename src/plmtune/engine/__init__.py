"""The training engine: optimiser construction and one explicit training loop."""

from .loop import FitResult, evaluate, fit
from .optim import build_optimizer, linear_schedule

__all__ = ["FitResult", "build_optimizer", "evaluate", "fit", "linear_schedule"]
