"""One YAML reader for every file that comes from elsewhere (recipes, suites, --set values).

``yaml.safe_load`` already refuses tags that would build Python objects. This reader adds what
a checker of downloaded files also needs:

* **duplicate keys** in one mapping are an error naming the key and its line (PyYAML silently
  keeps the last value, so ``lr: 1e-5`` followed by ``lr: 0.5`` would train at 0.5);
* **alias bombs** ("billion laughs"): anchors let a few hundred bytes describe a structure of
  10^9 nodes. Loading is cheap because aliases share objects, but anything that walks the result
  (validation, printing, merging) expands it. The expanded size is computed once, memoised per
  shared object, and a structure of more than ``MAX_NODES`` nodes is refused;
* **deep nesting** that would overflow Python's recursion is refused the same way.

Errors are raised as :class:`YamlProblem` with a message and a line; each caller wraps it in its
own one-paragraph error that names the file.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_NODES = 1_000_000


class YamlProblem(ValueError):
    """The text is not acceptable YAML; ``where`` is ' at line L, column C' or ''."""

    def __init__(self, problem: str, where: str = ""):
        super().__init__(f"{problem}{where}")
        self.problem, self.where = problem, where


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = key_node.value
                if key in seen:
                    raise YamlProblem(f"the key '{key}' appears twice in one mapping (first at line {seen[key]}); "
                                      "keep one", f" at line {key_node.start_mark.line + 1}")
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)


def expanded_size(value: Any, limit: int = MAX_NODES) -> int:
    """Nodes in `value` counted as if every shared sub-structure were copied out (memoised)."""
    memo: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, done = stack.pop()
        if not isinstance(node, (dict, list)) or (id(node) in memo and not done):
            continue
        children = list(node.values()) + list(node.keys()) if isinstance(node, dict) else node
        if done:
            memo[id(node)] = min(limit + 1, 1 + sum(memo.get(id(c), 1) for c in children))
            continue
        memo[id(node)] = limit + 1  # a cycle (a self-referencing alias) counts as too large
        stack.append((node, True))
        stack.extend((c, False) for c in children if isinstance(c, (dict, list)) and id(c) not in memo)
    return memo.get(id(value), 1)


def load_yaml(text: str) -> Any:
    """Parse `text` safely; raise :class:`YamlProblem` for syntax, duplicates, bombs and deep nesting."""
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except YamlProblem:
        raise
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise YamlProblem(problem, where) from None
    except RecursionError:
        raise YamlProblem("it is nested too deeply to read") from None
    if expanded_size(value) > MAX_NODES:
        raise YamlProblem(f"its anchors and aliases expand to more than {MAX_NODES:,} values (an 'alias bomb'); "
                          "write the values out instead")
    return value
