"""A plain (non-editable) install finds its shipped suites and runs `plmtune bench smoke`.

Found by issue 15: the suites lived at ``benchmarks/suites`` in the repository, outside the
package, so only an editable install could find them. This test installs a copy of the package
source with ``pip install --no-deps --no-build-isolation`` into a fresh virtual environment, runs
from a folder outside the repository, and checks that plmtune is imported from that
environment's site-packages. The dependencies come from the project's own virtual environment
through a ``.pth`` line (``--system-site-packages`` alone would only reach the base interpreter,
which lacks torch), so nothing is downloaded; site does not process the ``.pth`` files of a
folder that is merely on sys.path, so the project's editable ``src/`` entry stays out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from shared_data import REPO, shared_dataset

pytestmark = pytest.mark.slow


def test_a_non_editable_install_runs_the_smoke_suite(tmp_path):
    data_root = shared_dataset("sst2").parent
    source = tmp_path / "source"  # a copy, so the build writes nothing into the shared working tree
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "_plmtune_test_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")  # this interpreter's site-packages: torch & co.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    work = tmp_path / "elsewhere"  # not the repository: no src/ on the path, no ../shared/data
    work.mkdir()

    def run(*args, timeout=120):
        return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=work, env=env,
                              timeout=timeout)

    install = run(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", source,
                  timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    where = run(python, "-c", "import plmtune, json; print(json.dumps(plmtune.__file__))")
    assert where.returncode == 0, where.stderr
    imported = json.loads(where.stdout)
    assert imported.startswith(site) and not imported.startswith(str(REPO)), imported
    bench = run(venv / "bin" / "plmtune", "bench", "smoke", "--out", work / "smoke", "--data-root", data_root,
                timeout=1800)
    assert bench.returncode == 0, bench.stdout + bench.stderr[-3000:]
    assert "8 runs, 0 already done, 8 ran, 0 failed" in bench.stdout, bench.stdout
    suite = json.loads((work / "smoke" / "suite.json").read_text())
    assert suite["suite"].startswith(site)  # the shipped suite came from the installed package
    report = run(venv / "bin" / "plmtune", "report", work / "smoke")
    assert report.returncode == 0, report.stderr
    assert "| llrd | 2 |" in (work / "smoke" / "report.md").read_text()
