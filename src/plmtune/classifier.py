"""A trained model you can use: :func:`load` a saved model, then ``predict``, ``predict_proba``, ``evaluate``, ``save``.

Predictions go through the code that evaluated the model in training (the same tokenisation,
length-sorted batches, autocast and forward), so a reloaded model predicts what was tested::

    import plmtune
    clf = plmtune.load("runs/sst2/model")
    clf.predict(["a gripping, beautifully acted film", "a tedious mess"])   # ['1', '0'] or class names
    clf.predict_proba(["..."])                                               # (n, classes) numpy array
    clf.evaluate("data/sst2")                                                # metrics on its test split
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, PlmtuneError


def load(path: str | Path) -> Classifier:
    """Load a saved model (the folder ``--save-model`` writes) as a :class:`Classifier`."""
    return Classifier(*load_parts(path), source=Path(path))


def load_parts(directory: str | Path) -> tuple[Any, Any, dict[str, Any], Any]:
    """(model in eval mode, tokenizer, meta, recipe) of a saved model; see :func:`plmtune.load`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .assemble import head_model
    from .errors import RecipeError
    from .loading import build_recipe
    from .models import load_backbone
    from .saved import HEAD, META, _context, outside_files, read_meta
    from .techniques import build_techniques
    from .techniques._select import backbone

    directory = Path(directory)
    meta = read_meta(directory)
    encoder_dir = (directory / meta["encoder"]).resolve()
    try:
        recipe = build_recipe(meta["recipe"])
    except RecipeError as err:
        raise PlmtuneError(f"{directory / META}: field 'recipe' is not a valid recipe for this plmtune: {err}") from err
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, backbone=str(encoder_dir)))
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report would list the pooler, which plmtune never saves nor uses
    try:
        tokenizer, encoder = load_backbone(str(encoder_dir))
    finally:
        hf_logging.set_verbosity(level)
    ctx = _context(recipe, meta, tokenizer)
    techniques = build_techniques(recipe)
    problem = outside_files(techniques)
    if problem:
        raise PlmtuneError(f"{directory / META}: field 'recipe' describes a model that cannot load from its folder: "
                           f"{problem}.")
    try:
        model = head_model(recipe, encoder, meta["num_labels"])
        for technique in techniques:
            if technique.inference:
                model = technique.prepare_model(model, ctx)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise PlmtuneError(f"{directory / META} describes a model this plmtune cannot build "
                           f"({type(err).__name__}: {' '.join(str(err).split())[:200]}).") from err
    try:
        head = load_file(os.fspath(directory / HEAD))
    except (OSError, SafetensorError) as err:
        raise PlmtuneError(f"Could not read {directory / HEAD}: {' '.join(str(err).split())}.") from err
    try:
        missing, unexpected = model.load_state_dict(head, strict=False)
    except RuntimeError as err:  # a tensor of another shape than plmtune.json's model has
        raise PlmtuneError(f"{directory / HEAD} does not fit the model {META} describes: "
                           f"{' '.join(str(err).split())[:300]}.") from err
    state = model.state_dict()
    encoder_tensors = {t.data_ptr() for t in backbone(model)[2].state_dict().values()}
    missing = [k for k in missing if state[k].data_ptr() not in encoder_tensors]  # the encoder's, or tied to it
    if missing or unexpected:
        raise PlmtuneError(f"{directory / HEAD} does not fit the model {META} describes: "
                           f"{'missing ' + ', '.join(missing[:3]) if missing else ''}"
                           f"{'; ' if missing and unexpected else ''}"
                           f"{'unexpected ' + ', '.join(unexpected[:3]) if unexpected else ''}.")
    model.eval()
    return model, tokenizer, meta, recipe


class Classifier:
    """A trained text classifier: the model, its tokenizer, its recipe and its class names."""

    def __init__(self, model: Any, tokenizer: Any, meta: dict[str, Any], recipe: Any, source: Path | None = None):
        self.model, self.tokenizer, self.meta, self.recipe, self.source = model, tokenizer, meta, recipe, source

    @property
    def labels(self) -> list[str]:
        """Class names in class-id order (the ids as strings where the training data had bare ids)."""
        return list(self.meta["label_names"])

    @property
    def is_pair(self) -> bool:
        return bool(self.meta.get("is_pair"))

    def __repr__(self) -> str:
        return (f"Classifier({self.recipe.name!r} on {self.meta['task']!r}, classes {self.labels}"
                f"{', from ' + str(self.source) if self.source else ''})")

    # ------------------------------------------------------------------ inputs

    def rows(self, inputs: Any, labelled: bool = False, what: str = "the input") -> list[dict[str, Any]]:
        """Checked rows {text, text_pair?, label?, source} from texts, (text, pair) tuples, dicts or a data frame."""
        from .data import read_rows
        from .inputs import to_records, write_jsonl

        if isinstance(inputs, Path):
            return self.file_rows(inputs, labelled)
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, Sequence) and any(isinstance(x, str) for x in inputs) and \
                not all(isinstance(x, str) for x in inputs):
            bad = next(i for i, x in enumerate(inputs) if not isinstance(x, str))
            raise PlmtuneError(f"{what}: item {bad + 1} is {inputs[bad]!r}, not a string; give every text as a string.")
        if isinstance(inputs, Sequence) and inputs and all(isinstance(x, str) for x in inputs):
            records = [{"text": x} for x in inputs]
            cfg = dataclasses.replace(self.recipe.data, text_field="text", text_pair_field="text_pair")
        elif isinstance(inputs, Sequence) and inputs and all(isinstance(x, (tuple, list)) for x in inputs):
            if not all(len(x) == 2 and all(isinstance(t, str) for t in x) for x in inputs):
                raise PlmtuneError(f"{what}: pairs must be (text, text_pair) tuples of two strings.")
            records = [{"text": a, "text_pair": b} for a, b in inputs]
            cfg = dataclasses.replace(self.recipe.data, text_field="text", text_pair_field="text_pair")
        else:
            records, cfg = to_records(inputs, what), self.recipe.data
        if not records:
            raise PlmtuneError(f"{what} is empty; give at least one text.")
        pair = cfg.text_pair_field
        for i, record in enumerate(records, 1):  # said here: read_rows would name the temp file it reads
            if (record.get(pair) is not None) != self.is_pair:
                raise PlmtuneError(f"{what}: item {i} " + (f"has no '{pair}', but this model classifies text pairs "
                                                           "(give (text, text_pair) tuples or both fields)"
                                                           if self.is_pair else
                                                           f"has a '{pair}', but this model classifies single texts")
                                   + ".")
        with tempfile.TemporaryDirectory(prefix="plmtune-input-") as folder:
            path = write_jsonl(records, Path(folder) / "input.jsonl")
            try:
                rows, _ = read_rows(path, cfg, labelled=labelled, is_pair=self.is_pair, pair_from=path)
            except DataError as err:  # the same checks as files; named after the input, not a temp file
                raise DataError(what, err.detail, err.line, err.field) from None
        for row in rows:
            row["source"] = f"{what}:{row['source'].rsplit(':', 1)[1]}"  # 'the input:3', not a temp file
        return self._ids(rows, what) if labelled else rows

    def file_rows(self, path: str | Path, labelled: bool = False, keep_label: bool = False) -> list[dict[str, Any]]:
        """Checked rows of a .jsonl/.csv/.tsv file (the recipe's field names), or of a .txt file (a text per line).

        `keep_label` (unlabelled only): a row's gold label, where it has one, stays among its ``fields``.
        """
        from .data import _LINE_END, _decode, read_rows

        path = Path(path)
        if not path.is_file():
            raise PlmtuneError(f"Input {path} is not a file.")
        if path.suffix == ".txt":
            if labelled:
                raise PlmtuneError(f"{path}: a .txt file holds texts only; evaluation needs labels (use .jsonl/.csv).")
            lines = _LINE_END.split(_decode(path))  # line ends as the data reader counts them (not U+2028 etc.)
            rows = [{"text": line, "source": f"{path.name}:{i}"} for i, line in enumerate(lines, 1) if line.strip()]
            if self.is_pair:
                raise PlmtuneError(f"{path}: this model classifies text pairs; give a .jsonl/.csv with "
                                   f"'{self.recipe.data.text_field}' and '{self.recipe.data.text_pair_field}'.")
            if not rows:
                raise PlmtuneError(f"{path} holds no text.")
            return rows
        rows, _ = read_rows(path, self.recipe.data, labelled=labelled, is_pair=self.is_pair, pair_from=path,
                            keep_label=keep_label)
        return self._ids(rows, path) if labelled else rows

    def _ids(self, rows: list[dict[str, Any]], where: Any) -> list[dict[str, Any]]:
        """Labels as class ids of this model: one of its class names, or an id 0..n-1 (as training reads them)."""
        index = {name: i for i, name in enumerate(self.labels)}
        n = len(self.labels)
        for row in rows:
            value = row["label"]
            if isinstance(value, str) and value in index:
                row["label"] = index[value]
            elif isinstance(value, int) and 0 <= value < n:
                row["label"] = value
            else:
                raise DataError(where, f"label {value!r} is not a class of this model ({', '.join(self.labels)}; "
                                       f"or an id 0..{n - 1}).", int(row["source"].rsplit(":", 1)[1]),
                                self.recipe.data.label_field)
        return rows

    # ------------------------------------------------------------------ predictions

    def _loader_inputs(self, rows: list[dict[str, Any]]) -> Any:
        from .data import EncodedSplit
        from .saved import _context
        from .techniques import build_techniques

        techniques = [t for t in build_techniques(self.recipe) if t.inference]
        ctx = _context(self.recipe, self.meta, self.tokenizer)
        splits = {"predict": rows}
        for technique in techniques:  # the prompt's template, injected features: as in training
            splits = technique.prepare_data(splits, ctx)
        fields = {k: v for t in techniques for k, v in t.batch_fields.items()}
        data = self.recipe.data
        return EncodedSplit(splits["predict"], self.tokenizer, data.max_length, data.truncation, data.head_tokens,
                            fields=fields), fields

    def logits(self, rows: list[dict[str, Any]], batch_size: int | None = None, bf16: bool | None = None,
               progress: bool = False) -> Any:
        """Row-ordered logits (a float32 tensor) of checked rows."""
        from .data import PadCollator, eval_loader
        from .engine.loop import make_accelerator, predict

        encoded, fields = self._loader_inputs(rows)
        cfg = self.recipe.train
        cfg = dataclasses.replace(cfg, bf16=cfg.bf16 if bf16 is None else bf16,
                                  eval_batch_size=batch_size or cfg.eval_batch_size)
        accelerator = make_accelerator(cfg)
        model = accelerator.prepare(self.model)
        loader = eval_loader(encoded, cfg.eval_batch_size, PadCollator(self.tokenizer.pad_token_id or 0, fields))
        loader = accelerator.prepare(loader)
        if progress:
            from tqdm.auto import tqdm

            loader = tqdm(loader, desc="predict", unit="batch", leave=False)
        logits, _ = predict(model, loader, accelerator)
        self.model = accelerator.unwrap_model(model)
        return logits

    def predict_proba(self, inputs: Any, batch_size: int | None = None, bf16: bool | None = None) -> np.ndarray:
        """Class probabilities, (rows, classes), columns in the order of :attr:`labels`."""
        return self.logits(self.rows(inputs), batch_size, bf16).softmax(-1).numpy()

    def predict(self, inputs: Any, batch_size: int | None = None, bf16: bool | None = None) -> list[str]:
        """The predicted class name of each input (texts, (text, pair) tuples, dicts, a DataFrame or a Dataset)."""
        return [self.labels[i] for i in self.predict_proba(inputs, batch_size, bf16).argmax(1)]

    def evaluate(self, data: Any, split: str = "test", batch_size: int | None = None) -> dict[str, float]:
        """Accuracy, macro-F1, MCC, loss... on labelled data: a task folder (its `split`), a file, or in-memory rows."""
        import torch.nn.functional as F

        from .data import find_split_file
        from .metrics import classification_metrics

        if isinstance(data, (str, Path)) and Path(data).is_dir():
            path = find_split_file(Path(data), split)
            if path is None:
                raise PlmtuneError(f"{data} has no {split} split ({split}.jsonl, .csv or .tsv).")
            rows = self.file_rows(path, labelled=True)
        elif isinstance(data, (str, Path)):
            rows = self.file_rows(data, labelled=True)
        else:
            rows = self.rows(data, labelled=True, what="the evaluation data")
        import torch

        logits = self.logits(rows, batch_size)
        labels = torch.tensor([row["label"] for row in rows])
        metrics = classification_metrics(labels.numpy(), logits.argmax(-1).numpy(), len(self.labels))
        metrics["loss"] = float(F.cross_entropy(logits, labels))
        return metrics

    # ------------------------------------------------------------------ saving and export

    def save(self, path: str | Path) -> dict[str, Any]:
        """Write this model as a saved-model folder (the format ``--save-model`` writes); returns its export notes."""
        from .saved import save_model

        meta = {k: v for k, v in self.meta.items() if k not in ("encoder", "transformers")}
        return save_model(self.model, self.tokenizer, self.recipe, meta, path)

    def export_onnx(self, path: str | Path, check: bool = True, opset: int | None = None) -> dict[str, Any]:
        """Write an ONNX graph of the whole model (see :func:`plmtune.export.export_onnx`)."""
        from .export import export_onnx

        return export_onnx(self, path, check=check, opset=opset)

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None, api: Any = None) -> str:
        """Upload the saved model to the Hugging Face Hub (needs internet; see :func:`plmtune.export.push_to_hub`)."""
        from .export import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, api=api)
