"""plmtune: accurate, stable fine-tuning of BERT-family encoders.

Public entry points: :func:`load_recipe`, :func:`run_finetune`, :func:`make_fewshot`,
:func:`register` / :class:`Technique` for new techniques.
"""

from .config import Recipe, load_recipe
from .errors import DataError, PlmtuneError, RecipeError, TrainingError
from .fewshot import make_fewshot
from .run import run_finetune
from .technique import Technique, TrainContext, list_techniques, register

__version__ = "0.1.0"

__all__ = ["DataError", "PlmtuneError", "Recipe", "RecipeError", "Technique", "TrainContext", "TrainingError",
           "list_techniques", "load_recipe", "make_fewshot", "register", "run_finetune"]
