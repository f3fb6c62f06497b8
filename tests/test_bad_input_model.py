"""Bad saved models and bad input to `plmtune predict / evaluate / export`, table-driven like tests/test_bad_input.py.

Each row runs the real CLI on a copy of a tiny saved model (built once per module): a hostile or
broken model folder (a path out of it in plmtune.json, a link out of it, a wrong format, version or
field, tensors that do not fit, pickled weights), or bad paths and rows given to predict, evaluate
and export. Each gives one paragraph naming the file (and the line and field where there is one),
exit 2, nothing on standard output, no payload run, no file written and the model folder as it was.
The same mechanics through the Python API are in tests/test_saved.py and tests/test_cli_model.py.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from plmtune.cli import main
from plmtune.saved import HEAD, META

ROWS = [{"text": f"{'good great' if i % 2 == 0 else 'bad awful'} {n}", "label": int(i % 2 == 0)}
        for i, n in enumerate(["film", "meal", "phone", "book", "song", "hotel", "car", "game"] * 2)]


def _jsonl(rows):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tokenizer):
    """Two saved tiny models, mean-pooled (the default) and cls-pooled, and their task folder."""
    from plmtune.assemble import prepare
    from plmtune.data import load_task
    from plmtune.loading import load_recipe
    from plmtune.models import tiny_bert

    root = tmp_path_factory.mktemp("bad_model")
    task = root / "task"
    task.mkdir()
    for split in ("train", "dev", "test"):
        (task / f"{split}.jsonl").write_text(_jsonl(ROWS))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("plmtune.assemble.load_backbone", lambda name: (tokenizer, tiny_bert(vocab_size=30522, seed=0)))
        for name, overrides in (("mean", []), ("cls", ["model.pooling=cls"])):
            recipe = load_recipe("baseline", overrides)
            prepared = prepare(recipe, load_task(task, recipe.data), 0)
            prepared.save(prepared.model, root / name)
    return root


# ------------------------------------------------------------------ what a row can set up


def _meta(model, **changes):
    meta = json.loads((model / META).read_text())
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del meta[key]
    (model / META).write_text(json.dumps(meta))
    return model


def _head(model, tensors):
    from safetensors.torch import save_file

    save_file(tensors, str(model / HEAD))
    return model


def _link_out(c):
    outside = c.t / "elsewhere.safetensors"
    (c.model / HEAD).rename(outside)
    (c.model / HEAD).symlink_to(outside)
    return c.model


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def _pickled(c):
    (c.model / HEAD).write_bytes(pickle.dumps({"classifier.weight": _Payload(c.t / "pwned")}))
    return c.model


def _file(c, name, text=None, data=None):
    path = c.t / name
    path.write_bytes(data) if data is not None else path.write_text(text)
    return path


def _hf_folder(c):
    (c.t / "hf").mkdir()
    (c.t / "hf" / "config.json").write_text("{}")
    return c.t / "hf"


def _predict(model, source, out="p.jsonl", *more):
    return lambda c: ["predict", model(c), "--input", source(c), "--out", c.out / out, *more]


def _stdin(data, *more):
    def make(c):
        c.stdin(data)
        return ["predict", c.model, "--input", "-", "--out", "-", *more]
    return make


def _evaluate(model, data, *more):
    return lambda c: ["evaluate", model(c), "--data", data(c), "--out", c.out / "m.json", *more]


def _export(model, *more):
    return lambda c: ["export", model(c), *[m(c) if callable(m) else m for m in more]]


GOOD_IN = lambda c: _file(c, "in.jsonl", _jsonl([{"text": "fine"}]))  # noqa: E731
MODEL = lambda c: c.model  # noqa: E731
LABELLED = lambda c: c.task / "test.jsonl"  # noqa: E731
IN_MODEL = r"model[/\\]"  # the copied model folder, as the message names it

CASES = {
    # a hostile or broken saved-model folder (through predict, evaluate and export)
    "model: encoder path out of the folder": (
        _predict(lambda c: _meta(c.model, encoder="../../etc"), GOOD_IN),
        IN_MODEL + r"plmtune\.json: field 'encoder' must be '\.' or 'encoder', got '\.\./\.\./etc'"),
    "model: absolute encoder path": (
        _evaluate(lambda c: _meta(c.model, encoder="/etc"), LABELLED),
        IN_MODEL + r"plmtune\.json: field 'encoder' must be '\.' or 'encoder'"),
    "model: weights linked from outside the folder": (
        _predict(_link_out, GOOD_IN),
        IN_MODEL + r"head\.safetensors is a link to .*elsewhere\.safetensors, outside the model folder"),
    "model: wrong format": (
        _predict(lambda c: _meta(c.model, format="pickle"), GOOD_IN),
        IN_MODEL + r"plmtune\.json: field 'format' must be 'plmtune-model'"),
    "model: newer format version": (
        _export(lambda c: _meta(c.model, version=99), "--to", "onnx", "--out", lambda c: c.out / "x"),
        IN_MODEL + r"plmtune\.json: field 'version' is 99; this plmtune reads version 1"),
    "model: missing field": (
        _predict(lambda c: _meta(c.model, seed=None), GOOD_IN),
        IN_MODEL + r"plmtune\.json: field 'seed' is missing or not a int"),
    "model: field of the wrong type": (
        _evaluate(lambda c: _meta(c.model, is_pair="no"), LABELLED),
        IN_MODEL + r"plmtune\.json: field 'is_pair' is missing or not a bool"),
    "model: class names that do not fit": (
        _predict(lambda c: _meta(c.model, label_names=["a", "a"]), GOOD_IN),
        IN_MODEL + r"plmtune\.json: field 'label_names' must list 2 distinct strings"),
    "model: recipe that is not valid": (
        _predict(lambda c: _meta(c.model, recipe={"train": {"lr": "fast"}}), GOOD_IN),
        IN_MODEL + r"plmtune\.json: field 'recipe' is not a valid recipe"),
    "model: recipe reading a file outside the folder": (
        _predict(lambda c: _meta(c.model, recipe={"techniques": [{"name": "inject", "id_field": "eid",
                                                                 "embeddings": "/etc/passwd"}]}), GOOD_IN),
        IN_MODEL + r"plmtune\.json: field 'recipe' describes a model that cannot load from its folder: .*"
                  r"inject\.embeddings \(/etc/passwd\)"),
    "model: description that is not JSON": (
        _predict(lambda c: (c.model / META).write_text("{oops") and c.model, GOOD_IN),
        IN_MODEL + r"plmtune\.json is not readable JSON"),
    "model: tensors of another shape": (
        _predict(lambda c: _meta(c.model, num_labels=3, label_names=["a", "b", "c"]), GOOD_IN),
        IN_MODEL + r"head\.safetensors does not fit the model plmtune\.json describes: .*classifier\.weight"),
    "model: tensors missing and unexpected": (
        _evaluate(lambda c: _head(c.model, {"classifier.weight": torch.zeros(2, 32), "surprise": torch.zeros(1)}),
                  LABELLED),
        IN_MODEL + r"head\.safetensors does not fit the model plmtune\.json describes: missing classifier\.bias; "
                  r"unexpected surprise"),
    "model: pickled weights (never unpickled)": (
        _predict(_pickled, GOOD_IN), r"Could not read .*model[/\\]head\.safetensors"),
    "model: folder that does not exist": (
        _predict(lambda c: c.t / "nomodel", GOOD_IN), r"Model folder .*nomodel does not exist"),
    "model: a plain transformers folder": (
        _export(_hf_folder, "--to", "onnx", "--out", lambda c: c.out / "x"),
        r"hf is not a plmtune model: it has no plmtune\.json.*use it as a backbone"),
    # predict: bad paths and rows
    "predict: input file that does not exist": (
        _predict(MODEL, lambda c: c.t / "absent.jsonl"), r"Input .*absent\.jsonl is not a file"),
    "predict: row without the text field": (
        _predict(MODEL, lambda c: _file(c, "in.jsonl", _jsonl([{"text": "fine"}, {"sentence": "wrong"}]))),
        r"in\.jsonl, line 2, field 'text': missing field \(fields present: sentence\)"),
    "predict: CSV without the text column": (
        _predict(MODEL, lambda c: _file(c, "in.csv", "sentence,id\nfine,1\n"), "p.csv"),
        r"in\.csv, line 2, field 'text': missing field"),
    "predict: text that is not a string": (
        _predict(MODEL, lambda c: _file(c, "in.jsonl", _jsonl([{"text": "a"}, {"text": "b"}, {"text": 5}]))),
        r"in\.jsonl, line 3, field 'text': must be a string, got 5"),
    "predict: a pair for a single-text model": (
        _predict(MODEL, lambda c: _file(c, "in.jsonl", _jsonl([{"text": "a", "text_pair": "b"}]))),
        r"in\.jsonl, line 1, field 'text_pair': this row has a 'text_pair'"),
    "predict: input that is not UTF-8": (
        _predict(MODEL, lambda c: _file(c, "in.jsonl", data=b'{"text": "ok"}\n{"text": "\xff"}\n')),
        r"in\.jsonl, line 2: the file is not valid UTF-8"),
    "predict: text file with no text": (
        _predict(MODEL, lambda c: _file(c, "in.txt", "\n  \n")), r"in\.txt holds no text"),
    "predict: output path that is a folder": (
        _predict(MODEL, GOOD_IN, "."), r"--out .*out is a folder; name the predictions file"),
    "predict: malformed JSON on standard input": (
        _stdin(b'{"text": "ok"}\n{oops\n'), r"Bad data in standard input, line 2: malformed JSON"),
    "predict: row without the text field on standard input": (
        _stdin(b'{"text": "ok"}\n{"nope": 1}\n'), r"Bad data in standard input, line 2, field 'text': missing field"),
    "predict: CSV on standard input without the text column": (
        _stdin(b"sentence\nfine\n", "--format", "csv"), r"Bad data in standard input, line 2, field 'text'"),
    "predict: non-UTF-8 text lines on standard input": (
        _stdin(b"fine\n\xfe\n", "--format", "txt"), r"standard input.*not valid UTF-8"),
    # evaluate: bad paths and labelled rows
    "evaluate: unknown label name": (
        _evaluate(MODEL, lambda c: _file(c, "e.jsonl", _jsonl([{"text": "a", "label": 1},
                                                              {"text": "b", "label": "meh"}]))),
        r"e\.jsonl, line 2, field 'label': label 'meh' is not a class of this model \(0, 1; or an id 0\.\.1\)"),
    "evaluate: label id out of range": (
        _evaluate(MODEL, lambda c: _file(c, "e.csv", "text,label\na,0\nb,5\n")),
        r"e\.csv, line 3, field 'label': label 5 is not a class of this model"),
    "evaluate: row without a label": (
        _evaluate(MODEL, lambda c: _file(c, "e.jsonl", _jsonl([{"text": "a", "label": 1}, {"text": "b"}]))),
        r"e\.jsonl, line 2, field 'label': missing field"),
    "evaluate: null label": (
        _evaluate(MODEL, lambda c: _file(c, "e.jsonl", _jsonl([{"text": "a", "label": None}]))),
        r"e\.jsonl, line 1, field 'label': the label is null"),
    "evaluate: text file without labels": (
        _evaluate(MODEL, lambda c: _file(c, "e.txt", "a text\n")), r"e\.txt: a \.txt file holds texts only"),
    "evaluate: task folder without the split": (
        _evaluate(MODEL, lambda c: c.task, "--split", "validation"), r"task has no validation split"),
    "evaluate: data file that does not exist": (
        _evaluate(MODEL, lambda c: c.t / "absent.csv"), r"Input .*absent\.csv is not a file"),
    "evaluate: metrics path that is a folder": (
        lambda c: ["evaluate", c.model, "--data", c.task, "--out", c.out],
        r"--out .*out is a folder; name the metrics"),
    # export: bad paths and refusals
    "export: onnx without --out": (_export(MODEL, "--to", "onnx"), r"--to onnx needs --out"),
    "export: transformers without --out": (_export(MODEL, "--to", "transformers"), r"--to transformers needs --out"),
    "export: hub without --repo": (_export(MODEL, "--to", "hub"), r"--to hub needs --repo NAMESPACE/NAME"),
    "export: a head transformers cannot express": (
        _export(MODEL, "--to", "transformers", "--out", lambda c: c.out / "hf"),
        r"model cannot be a transformers sequence classifier: .*mean"),
    "export: over the model being exported": (
        _export(lambda c: c.cls, "--to", "transformers", "--out", lambda c: c.cls),
        r"cls.*holds the model being exported"),
    "export: into a folder plmtune did not write": (
        _export(lambda c: c.cls, "--to", "transformers", "--out", lambda c: c.out),
        r"out already holds files plmtune did not write"),
    "export: onnx into a folder plmtune did not write": (
        _export(MODEL, "--to", "onnx", "--out", lambda c: c.out),
        r"out already holds files plmtune did not write"),
}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_model_or_input_gives_one_paragraph_exit_2_and_writes_nothing(case, built, tmp_path, capsys,
                                                                         monkeypatch):
    make_args, pattern = CASES[case]
    ctx = SimpleNamespace(t=tmp_path, model=tmp_path / "model", cls=tmp_path / "cls", task=built / "task",
                          out=tmp_path / "out")
    shutil.copytree(built / "mean", ctx.model)
    shutil.copytree(built / "cls", ctx.cls)
    ctx.out.mkdir()
    (ctx.out / "keep.txt").write_text("an older file\n")
    ctx.stdin = lambda data: monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    args = [str(a) for a in make_args(ctx)]
    models = {name: _snapshot(tmp_path / name) for name in ("model", "cls")}  # as the row left them
    code = main(args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 0 and err.startswith("plmtune: error: "), err
    assert re.search(pattern, err), err
    assert captured.out == ""  # no partial predictions or metrics on standard output
    assert not (tmp_path / "pwned").exists()  # a pickled payload never runs
    assert sorted(p.name for p in ctx.out.iterdir()) == ["keep.txt"]  # no output, no temp file
    assert (ctx.out / "keep.txt").read_text() == "an older file\n"
    assert {name: _snapshot(tmp_path / name) for name in models} == models  # the model folders as they were
    assert "plmtune-predict-" not in err  # standard input is named as such, never by its temp file


def test_the_table_covers_each_command_and_the_model_folder():
    kinds = {case.split(":")[0] for case in CASES}
    assert kinds == {"model", "predict", "evaluate", "export"} and len(CASES) >= 30
