"""plmtune: accurate, stable fine-tuning of BERT-family encoders.

Public entry points: :func:`load_recipe`, :func:`run_recipe`, :func:`make_fewshot`,
:func:`register` / :class:`Technique` for new techniques, :func:`register_stage` / :class:`Stage`
for new stages.
"""

from .config import Recipe
from .errors import DataError, PlmtuneError, RecipeError, TrainingError
from .fewshot import make_fewshot
from .loading import load_recipe
from .run import run_finetune, run_recipe
from .stages import Stage, register_stage
from .technique import Technique, TrainContext, register
from .techniques import list_techniques

__version__ = "0.1.0"

__all__ = ["DataError", "PlmtuneError", "Recipe", "RecipeError", "Stage", "Technique", "TrainContext",
           "TrainingError", "list_techniques", "load_recipe", "make_fewshot", "register", "register_stage",
           "run_finetune", "run_recipe"]
