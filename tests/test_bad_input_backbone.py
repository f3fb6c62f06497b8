"""Bad backbones, table-driven (issue 14, B1-B5): one paragraph naming the path or file, exit 2, nothing run.

Same contract as tests/test_bad_input.py, whose helpers this reuses. Each case runs with the
temporary folder as the working directory, so relative backbone paths resolve inside it.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
import torch

from plmtune.cli import main
from test_bad_input import _task

MARKER = "payload-ran"


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from plmtune.models import load_backbone

    return load_backbone("minilm")[0]


def _folder(root: Path, config: object = None, tokenizer: bool = False) -> Path:
    folder = root / "bb"
    folder.mkdir()
    if tokenizer:
        _tokenizer().save_pretrained(folder)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _saved(root: Path, damage: str) -> Path:
    """A real tiny BERT folder (tokenizer included), then its weights file damaged as `damage` says."""
    from plmtune.models import tiny_bert

    folder = root / "bb"
    tiny_bert(vocab_size=30522).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "pickle":
        weights.unlink()
        torch.save({"x": _Payload()}, folder / "pytorch_model.bin")
    return folder


class _Payload:
    """Unpickling this would run code that leaves a marker file; the load must refuse it."""

    def __reduce__(self):
        import os

        return os.mkdir, (MARKER,)


def _run(backbone):  # noqa: ANN001, ANN202
    return lambda t: ["run", "baseline", "--data", _task(t), "--set", f"model.backbone={backbone(t)}"]


CASES = {
    "B1 relative path that does not exist": (_run(lambda t: "./bb/nope"),
                                             r"Backbone path './bb/nope' does not exist \(looked for /.*bb/nope;"),
    "B1 path below an existing folder": (_run(lambda t: (t / "bb").mkdir() or "bb/nope"),
                                         r"Backbone path 'bb/nope' does not exist .*the local folder 'bb' exists"),
    "B1 absolute path that does not exist": (_run(lambda t: t / "no" / "such"),
                                             r"does not exist \(looked for .*no/such; a name like this is a local "
                                             r"path, never a hub name\)"),
    "B3 config.json {} and no tokenizer": (_run(lambda t: _folder(t, {})),
                                           r"bb is not a loadable model: its config.json has no 'model_type'.*"
                                           r"it holds no tokenizer files"),
    "B3 unknown model_type": (_run(lambda t: _folder(t, {"model_type": "gpt99"})),
                              r"bb is not a loadable model: its config.json names model_type 'gpt99', which this "
                              r"transformers .* does not know"),
    "B3 config.json {} beside a tokenizer": (_run(lambda t: _folder(t, {}, tokenizer=True)),
                                             r"bb is not a loadable model: its config.json has no 'model_type'"),
    "B3 config.json not an object": (_run(lambda t: _folder(t, [1], tokenizer=True)),
                                     r"its config.json holds a list, not a JSON object"),
    "B4 unknown ~user": (_run(lambda t: "~nosuchuser/x"),
                         r"'~nosuchuser/x' starts with '~nosuchuser', but there is no user 'nosuchuser'"),
    "B5 pickle payload in pytorch_model.bin": (_run(lambda t: _saved(t, "pickle")),
                                               r"bb/pytorch_model.bin holds pickled Python objects.*never runs code"),
    "B5 truncated model.safetensors": (_run(lambda t: _saved(t, "truncated")),
                                       r"bb/model.safetensors is damaged or cut short"),
    "B2 backbone is a file": (_run(lambda t: (t / "w.bin").write_bytes(b"x") and t / "w.bin"),
                              r"w.bin is a file, not a model folder"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_backbone_gives_one_paragraph_exit_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    make_args, pattern = CASES[case]
    monkeypatch.chdir(tmp_path)
    args = [str(a) for a in make_args(tmp_path)] + ["--out", str(tmp_path / "out")]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert re.search(pattern, err), err
    assert not (tmp_path / "out" / "result.json").exists()
    assert not (tmp_path / MARKER).exists()  # nothing from the file was executed
    assert "weights_only" not in err  # never advise loading with weights_only=False


def test_the_payload_would_run_if_unpickled(tmp_path, monkeypatch):
    """The B5 pickle case is a real payload: unpickling it without weights_only does run it."""
    monkeypatch.chdir(tmp_path)
    folder = _saved(tmp_path, "pickle")
    import pickle
    import zipfile

    with zipfile.ZipFile(folder / "pytorch_model.bin") as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    pickle.loads(data)  # noqa: S301  (the point: show the payload is live)
    assert (tmp_path / MARKER).exists()
