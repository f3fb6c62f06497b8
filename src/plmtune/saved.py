"""The saved-model format: what ``--save-model``, every stage and :meth:`Classifier.save` write, and its loader.

A saved model is a folder::

    plmtune.json        what the model is: format version, the recipe it was trained with, the class
                        names, the task, the preparation notes its techniques need (JSON, never code)
    head.safetensors    every tensor of the trained model outside the encoder (classifier, adapters,
                        the prompt's MLM head, a CNN pooler), by its name in the model
    README.md           a model card: labels, and how to load it each way
    config.json, model.safetensors, tokenizer files
                        where transformers can express the head exactly: a standard
                        ``<Arch>ForSequenceClassification`` (``id2label`` set), loadable by
                        ``AutoModelForSequenceClassification`` and ``pipeline("text-classification")``
                        with plmtune's predictions
    encoder/            otherwise: the encoder alone (config, weights, tokenizer), and no config.json at
                        the top, so transformers refuses the folder instead of building a random head

transformers' heads read the first token through ``tanh(dense(h))`` before the output layer. A
plmtune head on the ``cls`` pooling is ``W·h + b``; it is written with ``dense = ε·I`` (ε = 1e-4)
and the output layer ``W/ε``, so ``W·tanh(ε·h)/ε = W·h·(1 − (εh)²/3 + …)``: equal to plmtune's
logits to float32 precision. Each export is checked against the trained model on random inputs
before it is written, and refused (with the reason in plmtune.json) if it differs. Mean, CNN
and concat pooling, adapters, the prompt's MLM head and feature injection have no transformers
equivalent: those models load through plmtune (and export to ONNX, :mod:`plmtune.export`).

Loading (:func:`plmtune.classifier.load`) rebuilds the model the way training built it (:func:`plmtune.assemble.head_model`, then
the ``prepare_model`` of every technique declared ``inference``), then loads the tensors: no
pickle, no code from the folder, and the recipe is validated like any other.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import PlmtuneError
from .rundir import _umask

FORMAT, VERSION = "plmtune-model", 1
META, HEAD, ENCODER_DIR, CARD = "plmtune.json", "head.safetensors", "encoder", "README.md"
EPS = 1e-4  # the scale of the identity dense layer of an exported transformers head (see the module doc)
EXPORT_TOLERANCE = 1e-4  # max |logit difference| (relative to the largest logit, at least 1) an export may have

# transformers' sequence-classification heads, per model type: (dense layer before tanh, output layer).
_HF_HEADS = {
    "bert": lambda m: (m.bert.pooler.dense, m.classifier),
    "roberta": lambda m: (m.classifier.dense, m.classifier.out_proj),
    "xlm-roberta": lambda m: (m.classifier.dense, m.classifier.out_proj),
    "mpnet": lambda m: (m.classifier.dense, m.classifier.out_proj),
}


def model_meta(ctx: Any, label_names: list[str] | None, is_pair: bool) -> dict[str, Any]:
    """plmtune.json's content for a model trained in `ctx` (a TrainContext) on a task with these labels."""
    from .version import __version__

    extras = {}
    for key, value in ctx.extras.items():  # notes prepare_model may read again (inject's feature_dim)
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        extras[key] = value
    names = [str(n) for n in label_names] if label_names else [str(i) for i in range(ctx.num_labels)]
    return {"format": FORMAT, "version": VERSION, "plmtune_version": __version__, "task": ctx.task_name,
            "num_labels": ctx.num_labels, "label_names": names, "labels_are_names": bool(label_names),
            "is_pair": bool(is_pair), "seed": ctx.seed, "recipe": ctx.recipe.to_dict(), "extras": extras}


def outside_files(techniques: list[Any]) -> str | None:
    """Why a model with these techniques would read files from outside its folder to predict, or None."""
    for technique in techniques:
        named = [f for f in technique.files if technique.inference and getattr(technique.config, f, None)]
        if named:
            return (f"its technique '{technique.name}' reads {technique.name}.{named[0]} "
                    f"({getattr(technique.config, named[0])}) at prediction time, and a saved model must not depend "
                    "on a file outside its folder (give the vectors in a row field instead)")
    return None


def save_model(model: nn.Module, tokenizer: Any, recipe: Any, meta: dict[str, Any], directory: str | Path
               ) -> dict[str, Any]:
    """Write `model`, trained with `recipe`, as a saved-model folder at `directory` (atomically); return its export notes."""
    from safetensors.torch import save_file

    from .techniques import build_techniques
    from .techniques._select import backbone

    techniques = build_techniques(recipe)
    problem = outside_files(techniques)
    if problem:
        raise PlmtuneError(f"Cannot save the model to {directory}: {problem}.")
    if any("export_model" in t.overridden_hooks() for t in techniques):
        model = copy.deepcopy(model)  # export_model may change it (LoRA merges); the caller's model stays
        ctx = _context(recipe, meta, tokenizer)
        for technique in techniques:
            model = technique.export_model(model, ctx)
    encoder = backbone(model)[2]
    encoder_tensors = {t.data_ptr() for t in encoder.state_dict().values()}
    head = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
            if v.data_ptr() not in encoder_tensors}
    hf, reason = hf_classifier(model, encoder, meta, set(head))
    meta = {**meta, "encoder": "." if hf is not None else ENCODER_DIR,
            "transformers": {"exportable": hf is not None, "reason": reason,
                             "architecture": type(hf).__name__ if hf is not None else None}}
    directory = Path(directory)

    def write(staging: Path) -> None:
        # The saved tokenizer cuts where training did: pipeline(..., truncation=True) then sees what plmtune saw.
        limit, tokenizer.model_max_length = tokenizer.model_max_length, recipe.data.max_length
        try:
            if hf is not None:
                hf.save_pretrained(staging)
                tokenizer.save_pretrained(staging)
            else:
                encoder.save_pretrained(staging / ENCODER_DIR)
                tokenizer.save_pretrained(staging / ENCODER_DIR)
        finally:
            tokenizer.model_max_length = limit
        save_file(head, os.fspath(staging / HEAD))
        (staging / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (staging / CARD).write_text(model_card(meta, directory.name), encoding="utf-8")

    write_folder(directory, write)
    return {"path": str(directory), **meta["transformers"]}


MARK = ".plmtune-export"  # in every folder write_folder makes: plmtune may replace it
OWNED = (META, "onnx.json", MARK)


def check_target(directory: Path, keep: tuple[Path, ...] = ()) -> None:
    """Refuse to replace a file, a folder plmtune did not write, or one of `keep` (or a folder holding one)."""
    if directory.is_symlink() or directory.is_file():
        raise PlmtuneError(f"{directory} is a file; name a new folder (or one plmtune wrote) to save into.")
    resolved = directory.resolve()
    for source in keep:
        source = source.resolve()
        if resolved == source or source.is_relative_to(resolved):
            raise PlmtuneError(f"{directory} holds the model being exported ({source}); name another folder.")
    if directory.is_dir() and any(directory.iterdir()) and not any((directory / n).is_file() for n in OWNED):
        raise PlmtuneError(f"{directory} already holds files plmtune did not write (no {META}, onnx.json or {MARK}); "
                           "saving there would replace them. Name a new or empty folder.")


def write_folder(directory: Path, write: Any, keep: tuple[Path, ...] = ()) -> None:
    """Run ``write(staging)`` on a temp folder beside `directory`, then put it in place: all or nothing.

    Only a folder plmtune wrote (see :func:`check_target`) is replaced, and only once the new one is complete.
    """
    directory = Path(directory)
    check_target(directory, keep)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        mask = _umask()
        staging.chmod(0o777 & ~mask)
        write(staging)
        (staging / MARK).write_text("written by plmtune: plmtune may replace this folder\n", encoding="utf-8")
        for item in staging.rglob("*"):  # readable by others, like any file open() writes (not mkstemp's 0600)
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except Exception as err:  # safetensors and transformers raise their own types on a full disk
        shutil.rmtree(staging, ignore_errors=True)
        text = str(err).strip()
        reason = getattr(err, "strerror", None) or (text.splitlines()[0] if text else type(err).__name__)
        raise PlmtuneError(f"Could not save the model to {directory}: {reason}. Nothing partial was left there "
                           "(it is written to a temp folder and renamed when complete).") from err


def hf_classifier(model: nn.Module, encoder: nn.Module, meta: dict[str, Any], head_keys: set[str]
                  ) -> tuple[nn.Module | None, str | None]:
    """The transformers classifier equal to `model`, or (None, why there is none)."""
    from transformers import AutoModelForSequenceClassification

    from .models import SequenceClassifier

    kind = getattr(encoder.config, "model_type", None)
    if type(model) is not SequenceClassifier:
        return None, f"its head is plmtune's {type(model).__name__}, which transformers has no class for"
    if model.pooling != "cls":
        return None, (f"it pools with '{model.pooling}', and transformers' sequence-classification heads read "
                      "the first token only (train with model.pooling: cls for a transformers-loadable model)")
    if head_keys - {"classifier.weight", "classifier.bias"}:
        extra = sorted(head_keys - {"classifier.weight", "classifier.bias"})
        return None, f"it has parameters outside the encoder and the linear head ({', '.join(extra[:3])}, ...)"
    if kind not in _HF_HEADS:
        return None, f"plmtune does not export {kind!r} encoders to transformers heads yet"
    truncation = meta["recipe"].get("data", {}).get("truncation", "head")
    if truncation != "head":
        return None, (f"it was trained with data.truncation: {truncation}, and transformers' tokenizer cuts long "
                      "texts at the end only")
    config = copy.deepcopy(encoder.config)
    config.num_labels = meta["num_labels"]
    config.id2label = dict(enumerate(meta["label_names"]))
    config.label2id = {name: i for i, name in enumerate(meta["label_names"])}
    config.classifier_dropout = model.dropout.p
    hf = AutoModelForSequenceClassification.from_config(config)
    base = getattr(hf, hf.base_model_prefix)
    missing, unexpected = base.load_state_dict(encoder.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        return None, "its encoder's weights do not match a plain transformers encoder of its type"
    dense, out = _HF_HEADS[kind](hf)
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.weight.shape[0]) * EPS)
        dense.bias.zero_()
        out.weight.copy_(model.classifier.weight.detach().cpu().float() / EPS)
        out.bias.copy_(model.classifier.bias.detach().cpu().float())
    difference = export_difference(model, hf)
    if difference > EXPORT_TOLERANCE:
        return None, f"the transformers head differs from the trained one by {difference:.2g} on a probe batch"
    return hf, None


def export_difference(model: nn.Module, hf: nn.Module, seed: int = 0) -> float:
    """Max |logit difference| between plmtune's model and an exported one on random token ids (relative, ≥ 1)."""
    vocab = hf.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # padding in one row
    was = model.training, hf.training
    model.eval(), hf.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            ours = model(input_ids=ids.to(device), attention_mask=mask.to(device))["logits"].float().cpu()
            theirs = hf(input_ids=ids, attention_mask=mask).logits.float()
    finally:
        model.train(was[0]), hf.train(was[1])
    return float((ours - theirs).abs().max() / max(1.0, float(ours.abs().max())))


def model_card(meta: dict[str, Any], name: str) -> str:
    labels = ", ".join(meta["label_names"])
    hf = meta["transformers"]
    if hf["exportable"]:
        how = ("```python\nfrom transformers import pipeline\nclf = pipeline(\"text-classification\", "
               f"model=\"{name}\")\nclf([\"a sentence\"])\n```\n\nor `AutoModelForSequenceClassification.from_pretrained"
               f"(\"{name}\")` ({hf['architecture']}; its predictions are plmtune's).")
    else:
        how = (f"Not loadable as a transformers classifier: {hf['reason']}. The folder has no top-level "
               "config.json on purpose, so transformers refuses it instead of building a random head. "
               f"The encoder alone is in `{ENCODER_DIR}/` (AutoModel); for the whole model use plmtune, or "
               f"`plmtune export {name} --to onnx` for ONNX Runtime.")
    return (f"# {meta['recipe'].get('name', 'plmtune model')} on {meta['task'] or 'a task'}\n\n"
            f"A text classifier trained with plmtune {meta['plmtune_version']} (recipe below in plmtune.json). "
            f"Classes: {labels}.\n\n## plmtune\n\n```python\nimport plmtune\nclf = plmtune.load(\"{name}\")\n"
            f"clf.predict([\"a sentence\"])\n```\n\n`plmtune predict {name} --input texts.jsonl --out preds.jsonl`\n\n"
            f"## transformers\n\n{how}\n")


# --------------------------------------------------------------------------- loading


def read_meta(directory: Path) -> dict[str, Any]:
    """plmtune.json of a saved model, checked; a PlmtuneError naming the file and field otherwise."""
    path = directory / META
    if not directory.is_dir():
        raise PlmtuneError(f"Model folder {directory} does not exist (a saved model is the folder that "
                           "'plmtune run --save-model' writes as OUT/model).")
    if not path.is_file():
        hint = (" It looks like a plain transformers model; use it as a backbone (model.backbone) instead."
                if (directory / "config.json").is_file() else "")
        raise PlmtuneError(f"{directory} is not a plmtune model: it has no {META} ('plmtune run --save-model' "
                           f"writes OUT/model with one).{hint}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise PlmtuneError(f"{path} is not readable JSON ({' '.join(str(err).split())}).") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PlmtuneError(f"{path}: field 'format' must be '{FORMAT}'; this is not a plmtune model description.")
    if meta.get("version") != VERSION:
        raise PlmtuneError(f"{path}: field 'version' is {meta.get('version')!r}; this plmtune reads version "
                           f"{VERSION} (upgrade plmtune to read newer models).")
    checks = {"num_labels": int, "label_names": list, "recipe": dict, "extras": dict, "task": str, "encoder": str,
              "seed": int, "is_pair": bool, "labels_are_names": bool}
    for key, kind in checks.items():
        if not isinstance(meta.get(key), kind) or (kind is not bool and isinstance(meta.get(key), bool)):
            raise PlmtuneError(f"{path}: field '{key}' is missing or not a {kind.__name__}.")
    if meta["encoder"] not in (".", ENCODER_DIR):  # never a path out of the folder
        raise PlmtuneError(f"{path}: field 'encoder' must be '.' or '{ENCODER_DIR}', got {meta['encoder']!r}.")
    names = meta["label_names"]
    if len(names) != meta["num_labels"] or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise PlmtuneError(f"{path}: field 'label_names' must list {meta['num_labels']} distinct strings.")
    outside = [p for p in directory.rglob("*") if p.is_symlink() and not p.resolve().is_relative_to(directory.resolve())]
    if outside:
        raise PlmtuneError(f"{outside[0]} is a link to {outside[0].resolve()}, outside the model folder {directory}; a "
                           "saved model is read from its own folder only.")
    return meta


def _context(recipe: Any, meta: dict[str, Any], tokenizer: Any) -> Any:
    from .technique import TrainContext

    return TrainContext(recipe=recipe, seed=int(meta.get("seed", 0)), tokenizer=tokenizer,
                        num_labels=meta["num_labels"], task_name=meta["task"], extras=dict(meta["extras"]))
