"""result.json: one typed record, written by the run pipeline and by the peer baselines.

The field order is the file's: what ran on what, its metrics, the stage's details, then the
environment. Readers (bench.report, the table scripts) read it by key; new keys may be added,
none removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .provenance import git_commit, machine, peak_memory, versions


@dataclass
class RunRecord:
    """One finished run. `details` holds what the stage adds (history, timings, stage sections)."""

    task: str
    task_dir: str
    num_labels: int
    seed: int
    recipe: dict[str, Any]
    test: dict[str, float] | None
    dev: dict[str, float] | None
    parameters: dict[str, int]
    data_files: dict[str, str] | None = None
    label_names: list[str] | None = None
    sizes: dict[str, int] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    peer: str | None = None
    environment: dict[str, Any] = field(default_factory=lambda: {
        "peak_memory": peak_memory(), "versions": versions(), "machine": machine(), "git": git_commit()})

    @classmethod
    def for_task(cls, task: Any, task_dir: str | Path, **fields: Any) -> RunRecord:
        """A record of a run on a loaded task (plmtune.data.TaskData)."""
        return cls(task=task.name, task_dir=str(Path(task_dir).resolve()), num_labels=task.num_labels,
                   data_files={k: str(v.resolve()) for k, v in task.files.items()},
                   label_names=task.label_names, **fields)

    def to_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {"status": self.status}
        if self.peer is not None:
            head["peer"] = self.peer
        head |= {"task": self.task, "task_dir": self.task_dir}
        if self.data_files is not None:
            head["data_files"] = self.data_files
        head["num_labels"] = self.num_labels
        if self.label_names is not None:
            head["label_names"] = self.label_names
        if self.sizes is not None:
            head["sizes"] = self.sizes
        return {**head, "recipe": self.recipe, "seed": self.seed, "test": self.test, "dev": self.dev,
                **self.details, "parameters": self.parameters, **self.environment}
