"""Shipping a trained model: ONNX export (checked against ONNX Runtime) and upload to the Hugging Face Hub.

ONNX works for every head plmtune trains (mean pooling, adapters, the prompt's MLM head): the graph
is the whole model, from token ids to logits. :func:`export_onnx` writes ``model.onnx``, the
tokenizer and ``onnx.json`` (inputs, class names, the measured difference to torch), and refuses
to write anything if ONNX Runtime's logits differ from torch's by more than ``tolerance``
(relative to the largest logit, at least 1) on probe texts run through the model's own
tokenisation. Needs ``pip install plmtune[export]`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import PlmtuneError

ONNX_TOLERANCE = 1e-4
PROBE_TEXTS = ["A short sentence.", "Another, somewhat longer sentence to classify, with punctuation!",
               "plmtune", "The last probe text goes on for a while so that the batch needs padding in it."]


class _LogitsOnly(nn.Module):
    """The model's forward with positional inputs and the logits as its one output (what ONNX graphs take)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs)))["logits"]


def _prepared_by(clf: Any) -> list[str]:
    """The techniques whose prepare_data changes new text before the model sees it (a prompt's template)."""
    from .techniques import build_techniques

    return [t.name for t in build_techniques(clf.recipe) if t.inference and "prepare_data" in t.overridden_hooks()]


def _probe_batch(clf: Any) -> dict[str, torch.Tensor]:
    from .data import PadCollator
    from .techniques import build_techniques

    fields = {k for t in build_techniques(clf.recipe) if t.inference for k in t.batch_fields}
    if fields:
        raise PlmtuneError(f"ONNX export of a model that reads per-row fields ({', '.join(sorted(fields))}) is not "
                           "supported yet: its graph would need those inputs too.")
    texts = [(t, t[::-1]) for t in PROBE_TEXTS] if clf.is_pair else PROBE_TEXTS
    encoded, _ = clf._loader_inputs(clf.rows(texts))
    batch = PadCollator(clf.tokenizer.pad_token_id or 0)([encoded[i] for i in range(len(encoded))])
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def export_onnx(clf: Any, path: str | Path, check: bool = True, opset: int | None = None,
                tolerance: float = ONNX_TOLERANCE) -> dict[str, Any]:
    """Write `clf` (a :class:`plmtune.classifier.Classifier`) as an ONNX model folder at `path`."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise PlmtuneError("ONNX export needs onnx and onnxruntime: pip install 'plmtune[export]'.") from err
    from .saved import write_folder

    model = clf.model.to("cpu").eval()
    batch = _probe_batch(clf)
    names = list(batch)
    wrapped = _LogitsOnly(model, names).eval()  # export restores the mode it found: keep it eval
    with torch.no_grad():
        expected = wrapped(*batch.values()).float()
    path = Path(path)
    notes: dict[str, Any] = {"format": "plmtune-onnx", "inputs": names, "outputs": ["logits"],
                             "label_names": clf.labels, "is_pair": clf.is_pair,
                             "max_length": clf.recipe.data.max_length, "truncation": clf.recipe.data.truncation,
                             "prepared_by": _prepared_by(clf), "tolerance": tolerance}

    def write(staging: Path) -> None:
        file = staging / "model.onnx"
        axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
        kwargs = {"opset_version": opset} if opset else {}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks it folds (checked below)
            torch.onnx.export(wrapped, tuple(batch.values()), str(file), input_names=names, output_names=["logits"],
                              dynamic_axes=axes, dynamo=False, **kwargs)
        if check:
            # the traced batch, and one row alone at its own (shorter) length: the graph's shapes are dynamic
            length = int(batch["attention_mask"][2].sum())
            single = {k: v[2:3, :length].contiguous() for k, v in batch.items()}
            with torch.no_grad():
                expected_single = wrapped(*single.values()).float()
            difference = max(onnx_difference(file, batch, expected), onnx_difference(file, single, expected_single))
            notes["max_difference"] = difference
            if not difference <= tolerance:
                raise PlmtuneError(f"ONNX Runtime's logits differ from torch's by {difference:.3g} (relative), more "
                                   f"than the tolerance {tolerance:g}; the export was not written.")
        clf.tokenizer.save_pretrained(staging)
        (staging / "onnx.json").write_text(json.dumps(notes, indent=2) + "\n", encoding="utf-8")

    try:
        write_folder(path, write, keep=(clf.source,) if clf.source else ())
    except PlmtuneError as err:
        if isinstance(err.__cause__, PlmtuneError):
            raise err.__cause__ from None
        raise
    return {"path": str(path), **notes}


def onnx_difference(file: Path, batch: dict[str, torch.Tensor], expected: torch.Tensor) -> float:
    """Max |ONNX Runtime logits − torch logits| on `batch`, relative to the largest logit (at least 1)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {k: v.contiguous().numpy() for k, v in batch.items()})
    return float((torch.from_numpy(logits) - expected).abs().max() / max(1.0, float(expected.abs().max())))


def onnx_predict_proba(folder: str | Path, texts: list[str] | list[tuple[str, str]]) -> Any:
    """Class probabilities from an exported folder with ONNX Runtime alone (no torch model): what a server runs.

    Texts (or (text, text_pair) tuples for a pair model) are tokenised as plmtune does with head
    truncation. A model whose inputs plmtune prepares first (a prompt's template) or cuts otherwise
    (head+tail) is refused: feed its graph inputs prepared as ``Classifier._loader_inputs`` does.
    """
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    folder = Path(folder)
    notes = json.loads((folder / "onnx.json").read_text(encoding="utf-8"))
    if notes.get("prepared_by") or notes.get("truncation", "head") != "head":
        why = (f"its inputs go through {', '.join(notes['prepared_by'])} first" if notes.get("prepared_by")
               else f"it cuts long texts with data.truncation: {notes['truncation']}")
        raise PlmtuneError(f"{folder / 'onnx.json'}: onnx_predict_proba tokenises plain text only, and {why}; run "
                           "the graph on inputs prepared as plmtune does (plmtune.load(...) on the saved model).")
    pairs = bool(texts) and all(isinstance(t, (tuple, list)) for t in texts)
    if pairs != bool(notes.get("is_pair")):
        raise PlmtuneError(f"{folder}: this model classifies {'text pairs' if notes.get('is_pair') else 'single texts'}"
                           f"; give {'(text, text_pair) tuples' if notes.get('is_pair') else 'strings'}.")
    first, second = ([a for a, _ in texts], [b for _, b in texts]) if pairs else (list(texts), None)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    enc = tokenizer(first, second, truncation=True, max_length=notes["max_length"], padding=True, return_tensors="np")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {k: enc[k].astype(np.int64) for k in notes["inputs"]})
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def push_to_hub(clf: Any, repo_id: str, private: bool = False, token: str | None = None, api: Any = None,
                commit_message: str = "Upload a plmtune model") -> str:
    """Upload the model's saved folder to the Hub repo `repo_id` (created if missing); returns the commit URL.

    `api` is a ``huggingface_hub.HfApi`` (made from `token` by default); anything with the same
    ``create_repo`` and ``upload_folder`` methods works, which is how it is tested offline.
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="plmtune-push-") as tmp:
        folder = Path(tmp) / "model"
        clf.save(folder)  # the saved-model format, model card included, whatever the model came from
        try:
            api.create_repo(repo_id=repo_id, private=private, exist_ok=True)
            # delete_patterns: files of an earlier upload that this model lacks (a config.json where the new
            # model has none) must not stay beside it, or transformers would load the old model.
            info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message,
                                     delete_patterns="*")
        except Exception as err:  # noqa: BLE001  (the network boundary: hub, auth and HTTP errors)
            raise PlmtuneError(f"Could not upload to the Hub repo {repo_id}: {' '.join(str(err).split())} "
                               "(this needs internet access and a token with write access).") from err
    return str(getattr(info, "commit_url", info))
