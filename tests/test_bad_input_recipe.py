"""Recipes and overrides under hostile use (review cases R3, R6, R9, R10, S1, S2 and suites' R9).

Each case: one paragraph, exit code 2, nothing written. The alias bomb is the "billion laughs"
shape: nine levels of nine aliases, 9**9 strings once expanded.
"""

from __future__ import annotations

import re

import pytest

from plmtune.cli import main
from plmtune.safe_yaml import MAX_NODES, YamlProblem, expanded_size, load_yaml


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CASES = {
    "duplicate recipe key (R3)": (lambda t: ["validate", _file(t, "r.yaml", "train:\n  lr: 1.0e-5\n  lr: 0.5\n")],
                                  r"the key 'lr' appears twice in one mapping \(first at line 2\).* at line 3"),
    "extends is a list (R6)": (lambda t: ["validate", _file(t, "r.yaml", "name: x\nextends: [baseline]\n")],
                               r"'extends' must name one recipe .* got \['baseline'\]"),
    "extends is a number (R6)": (lambda t: ["validate", _file(t, "r.yaml", "name: x\nextends: 5\n")],
                                 r"'extends' must name one recipe .* got 5"),
    "alias bomb in a recipe (R9)": (lambda t: ["validate", _file(t, "r.yaml", "name: b\n" + _bomb()
                                                                 + "description: *a9\n")],
                                    r"anchors and aliases expand to more than"),
    "alias bomb in a --set value": (lambda t: ["show", "baseline", "--set", "description=" +
                                               "{" + _bomb().replace("\n", ", ").rstrip(", ") + "}"],
                                    r"Override 'description=.*anchors and aliases expand"),
    "technique name is a list (R10)": (lambda t: ["validate", "llrd", "--set", "techniques.0.name=[a]"],
                                       r"techniques\[0\]\.name must be a technique name \(a string\), got \['a'\]"),
    "--set below a single value (S1)": (lambda t: ["show", "baseline", "--set", "train.lr.x=1"],
                                        r"'lr' holds a single value .* so it has no key 'x'"),
    "a Hugging Face name and its key": (lambda t: ["validate", _file(t, "r.yaml", "train:\n  lr: 1.0e-5\n"
                                                                  "  learning_rate: 2.0e-5\n")],
                                        r"train sets both 'learning_rate' \(the Hugging Face name of 'lr'\) and 'lr'"),
    "typo near a Hugging Face name": (lambda t: ["show", "baseline", "--set", "train.learning_rat=1e-5"],
                                      r"Unknown key 'train\.learning_rat'\. Did you mean 'learning_rate'"),
    "--set extends (S2)": (lambda t: ["show", "baseline", "--set", "extends=llrd"],
                           r"'extends' cannot be set with --set"),
    "alias bomb in a suite (R9)": (lambda t: ["bench", _file(t, "s.yaml", "name: s\n" + _bomb() + "tasks: *a9\n"),
                                              "--out", str(t / "b")],
                                   r"Suite .*s\.yaml is not valid YAML: its anchors and aliases expand"),
    "duplicate suite key": (lambda t: ["bench", _file(t, "s.yaml", "name: s\ntasks: [a]\ntasks: [b]\n"),
                                       "--out", str(t / "b")],
                            r"Suite .*the key 'tasks' appears twice"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_recipe_gives_one_paragraph_exit_2_and_writes_nothing(case, tmp_path, capsys):
    build, pattern = CASES[case]
    argv = [str(a) for a in build(tmp_path)]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert re.search(pattern, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written (no bench folder either)


def test_expanded_size_counts_shared_structures_as_copies():
    leaf = [1, 2, 3]
    assert expanded_size(leaf) == 4  # the list and its three values
    assert expanded_size([leaf, leaf]) == 9
    level = leaf
    for _ in range(30):  # 2**30 leaves once expanded, a few objects in memory
        level = [level, level]
    assert expanded_size(level) > MAX_NODES


def test_self_referencing_alias_is_refused():
    with pytest.raises(YamlProblem, match="alias"):
        load_yaml("a: &a [*a]\n")


def test_merge_keys_and_plain_anchors_still_load():
    assert load_yaml("base: &b {lr: 1}\ntrain:\n  <<: *b\n  epochs: 2\n") == \
        {"base": {"lr": 1}, "train": {"lr": 1, "epochs": 2}}


def test_deeply_nested_yaml_is_refused_not_a_recursion_error():
    with pytest.raises(YamlProblem):
        load_yaml("[" * 20000 + "]" * 20000)
