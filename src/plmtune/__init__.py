"""plmtune: accurate, stable fine-tuning of BERT-family encoders.

Public entry points: :func:`train` (a recipe on in-memory data or a task folder, returning the
trained model), :func:`recipe` (a recipe built in code), :func:`load` (a saved model, with
``predict``/``predict_proba``/``evaluate``/``save``), :func:`load_recipe`, :func:`run_recipe`,
:func:`make_fewshot`, :func:`register` / :class:`Technique` for new techniques,
:func:`register_stage` / :class:`Stage` for new stages.
"""

from .api import TrainedModel, recipe, train
from .classifier import Classifier, load
from .config import Recipe
from .errors import DataError, PlmtuneError, RecipeError, TrainingError
from .fewshot import make_fewshot
from .loading import load_recipe
from .run import run_finetune, run_recipe
from .stages import Stage, register_stage
from .technique import Technique, TrainContext, register
from .techniques import list_techniques
from .version import __version__

__all__ = ["Classifier", "DataError", "PlmtuneError", "Recipe", "RecipeError", "Stage", "Technique", "TrainContext",
           "TrainedModel", "TrainingError", "__version__", "list_techniques", "load", "load_recipe", "make_fewshot",
           "recipe", "register", "register_stage", "run_finetune", "run_recipe", "train"]
