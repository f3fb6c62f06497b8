"""The commands that use a trained model: ``plmtune predict``, ``plmtune evaluate``, ``plmtune export``.

MODEL is the folder ``plmtune run --save-model`` writes (OUT/model). Registered into the parser by
:func:`add_model_commands` (called from :func:`plmtune.cli.build_parser`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import PlmtuneError

INPUT_FORMATS = ("jsonl", "csv", "tsv", "txt")


def _stdin_file(folder: str, fmt: str) -> Path:
    """Standard input as a file, byte for byte (the reader checks its encoding and names the line)."""
    path = Path(folder) / f"stdin.{fmt}"
    stream = getattr(sys.stdin, "buffer", None)
    path.write_bytes(stream.read() if stream is not None else sys.stdin.read().encode("utf-8"))
    return path


def _output_format(out: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = Path(out).suffix.lstrip(".")
    return suffix if out != "-" and suffix in ("jsonl", "csv", "tsv") else "jsonl"


def render_predictions(rows: list[dict[str, Any]], probs: Any, labels: list[str], fmt: str,
                       text_field: str = "text", pair_field: str = "text_pair", label_field: str | None = None) -> str:
    """Each input row's other columns, its text(s) under their own names, the predicted label and its probabilities.

    A row's gold label (`label_field`, where the row has one) comes right before the predicted label.
    An input column whose name the output uses (label, probs, p_<class>) is kept as input_<name>: a gold
    label in the recipe's default field 'label' comes out as input_label.
    """
    ours = {"label", "probs", *(f"p_{name}" for name in labels)}
    records = []
    for row, p in zip(rows, probs):
        fields = dict(row.get("fields", {}))
        gold = {label_field: fields.pop(label_field)} if label_field in fields else {}
        record = {(f"input_{k}" if k in ours else k): v for k, v in fields.items()}
        record[text_field] = row["text"]
        if "text_pair" in row:
            record[pair_field] = row["text_pair"]
        record.update({(f"input_{k}" if k in ours else k): v for k, v in gold.items()})
        record["label"] = labels[int(p.argmax())]
        record["probs"] = {name: round(float(v), 6) for name, v in zip(labels, p)}
        records.append(record)
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        # characters str.splitlines() breaks at, escaped (JSON allows it), so that any JSONL reader sees one row a line
        return text.translate({0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"})
    buffer = io.StringIO()
    keys = list(dict.fromkeys(k for r in records for k in r if k not in ("label", "probs")))  # every row's columns
    columns = keys + ["label"] + [f"p_{name}" for name in labels]
    writer = csv.DictWriter(buffer, fieldnames=columns, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for record in records:
        flat = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in record.items() if k != "probs"}
        writer.writerow({**flat, **{f"p_{n}": v for n, v in record["probs"].items()}})
    return buffer.getvalue()


def cmd_predict(args: argparse.Namespace) -> int:
    from .classifier import load
    from .rundir import write_text_atomic

    from .errors import DataError

    clf = load(args.model)
    with tempfile.TemporaryDirectory(prefix="plmtune-predict-") as folder:
        source = _stdin_file(folder, args.format or "jsonl") if args.input == "-" else Path(args.input)
        try:
            rows = clf.file_rows(source, keep_label=True)  # a gold label is kept, to compare with ours
        except DataError as err:
            if args.input != "-":
                raise
            raise DataError("standard input", err.detail, err.line, err.field) from None
        except PlmtuneError as err:
            if args.input != "-":
                raise
            raise PlmtuneError(str(err).replace(str(source), "standard input")) from None
    progress = sys.stderr.isatty() and not args.quiet_progress
    probs = clf.logits(rows, args.batch_size, True if args.bf16 else None, progress=progress).softmax(-1).numpy()
    data = clf.recipe.data
    text_field = "text" if source.suffix == ".txt" else data.text_field
    text = render_predictions(rows, probs, clf.labels, _output_format(args.out, args.output_format), text_field,
                              data.text_pair_field, data.label_field)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        out = Path(args.out)
        if out.is_dir():
            raise PlmtuneError(f"--out {out} is a folder; name the predictions file (e.g. {out / 'predictions.jsonl'}).")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, text)  # whole or absent: a failure leaves no half file, an older one intact
        counts = {name: int((probs.argmax(1) == i).sum()) for i, name in enumerate(clf.labels)}
        print(f"Predicted {len(rows)} rows ({', '.join(f'{k}: {v}' for k, v in counts.items())}). Wrote {out}",
              file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .classifier import load
    from .rundir import write_json_atomic

    if args.out and Path(args.out).is_dir():
        raise PlmtuneError(f"--out {args.out} is a folder; name the metrics file (e.g. {Path(args.out) / 'metrics.json'}).")
    clf = load(args.model)
    metrics = clf.evaluate(args.data, split=args.split, batch_size=args.batch_size)
    print(f"{Path(args.model)} on {args.data}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
          f"MCC {metrics['mcc']:.4f}, loss {metrics['loss']:.4f} ({metrics['n']} rows)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, {"model": str(args.model), "data": str(args.data), "split": args.split, **metrics})
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .classifier import load

    clf = load(args.model)
    if args.to == "onnx":
        if not args.out:
            raise PlmtuneError("--to onnx needs --out, the folder to write model.onnx into.")
        notes = clf.export_onnx(args.out, check=not args.no_check, opset=args.opset)
        checked = (f"ONNX Runtime matches torch within {notes['max_difference']:.2g} (tolerance {notes['tolerance']:g})"
                   if "max_difference" in notes else "not checked (--no-check)")
        print(f"Wrote {Path(args.out) / 'model.onnx'}; {checked}.")
    elif args.to == "transformers":
        if not args.out:
            raise PlmtuneError("--to transformers needs --out, the folder to write the transformers model into.")
        hf = clf.meta.get("transformers") or {}
        if not hf.get("exportable"):
            raise PlmtuneError(f"{args.model} cannot be a transformers sequence classifier: {hf.get('reason')}. "
                               "Use plmtune predict / plmtune.load, or --to onnx.")
        from .saved import write_folder

        source = Path(args.model)

        def copy(staging: Path) -> None:
            import shutil

            for item in source.iterdir():  # the transformers files; not plmtune's description nor its card
                if item.is_file() and item.name not in ("plmtune.json", "head.safetensors", "README.md", ".plmtune-export"):
                    shutil.copy2(item, staging / item.name)

        write_folder(Path(args.out), copy, keep=(source,))
        print(f"Wrote {args.out}: load it with AutoModelForSequenceClassification or "
              f"pipeline('text-classification', model='{args.out}') ({hf.get('architecture')}).")
    else:  # hub
        if not args.repo:
            raise PlmtuneError("--to hub needs --repo NAMESPACE/NAME.")
        url = clf.push_to_hub(args.repo, private=args.private)
        print(f"Uploaded {args.model} to {args.repo}: {url}")
    return 0


def add_model_commands(sub: Any, add_command: Any) -> None:
    """Register predict, evaluate and export (`add_command` is plmtune.cli's, passed in to keep imports one-way)."""
    p = add_command(sub, "predict", "predict labels and class probabilities with a saved model", cmd_predict)
    p.add_argument("model", help="the saved model folder (OUT/model of 'plmtune run --save-model')")
    p.add_argument("--input", required=True, metavar="FILE",
                   help="texts to classify: .jsonl/.csv/.tsv with the recipe's text field(s), .txt (one text per "
                        "line), or - for standard input")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="predictions file (.jsonl, .csv or .tsv, by its suffix), or - for standard output (JSONL)")
    p.add_argument("--format", choices=INPUT_FORMATS, help="format of standard input (--input -); default jsonl")
    p.add_argument("--output-format", choices=("jsonl", "csv", "tsv"), help="format of --out (default: by suffix)")
    p.add_argument("--batch-size", type=int, help="rows per batch (default: the recipe's train.eval_batch_size)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on recent CPUs and GPUs)")
    p.add_argument("--no-progress", dest="quiet_progress", action="store_true", help="no progress bar")

    p = add_command(sub, "evaluate", "metrics of a saved model on labelled data", cmd_evaluate)
    p.add_argument("model", help="the saved model folder (OUT/model of 'plmtune run --save-model')")
    p.add_argument("--data", required=True, help="a task folder (its --split is read) or a labelled .jsonl/.csv/.tsv")
    p.add_argument("--split", default="test", help="the split of a task folder to evaluate on")
    p.add_argument("--batch-size", type=int, help="rows per batch (default: the recipe's train.eval_batch_size)")
    p.add_argument("--out", help="also write the metrics to this JSON file")

    p = add_command(sub, "export", "export a saved model to ONNX, a transformers folder, or the Hugging Face Hub",
                    cmd_export)
    p.add_argument("model", help="the saved model folder (OUT/model of 'plmtune run --save-model')")
    p.add_argument("--to", required=True, choices=("onnx", "transformers", "hub"), help="what to export to")
    p.add_argument("--out", help="output folder (onnx, transformers)")
    p.add_argument("--no-check", action="store_true", help="skip comparing ONNX Runtime's outputs with torch's")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: torch's)")
    p.add_argument("--repo", help="Hub repository NAMESPACE/NAME (hub; needs internet and a write token)")
    p.add_argument("--private", action="store_true", help="create the Hub repository as private (hub)")
