"""The `plmtune` command. Each subcommand is one plain function; user errors exit 2 with one paragraph."""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PlmtuneError

if TYPE_CHECKING:
    from .config import DataConfig

# The data fields `run`, `tune`, `show` and `pretrain` take as options (recipe keys data.<name>).
DATA_FIELDS = {"text_field": "the field holding the text", "text_pair_field": "the field holding a pair's second text",
               "label_field": "the field holding the label"}
LISTS = ("techniques", "stages", "recipes")

DESCRIPTION = "plmtune: accurate, stable fine-tuning of BERT-family encoders on text classification."
EPILOG = """examples:
  plmtune demo                                   # offline: baseline vs LLRD on a bundled dataset
  plmtune list                                   # techniques, stages and shipped recipes
  plmtune run llrd --data few/16-13 --out runs/llrd --set train.lr=3e-5
  plmtune show llrd --set train.learning_rate=3e-5   # the resolved recipe (HF names accepted)

-v/--verbose and -q/--quiet go before or after the command. User errors exit 2."""


def _recipe(args: argparse.Namespace):
    """The recipe, with --set, then --seed and the --*-field options, applied."""
    from .loading import load_recipe

    overrides = list(args.set or [])
    if getattr(args, "seed", None) is not None:
        overrides.append(f"train.seed={args.seed}")
    for name in DATA_FIELDS:
        if getattr(args, name, None) is not None:  # JSON-quoted: a field named 'yes' or '1' stays a string
            overrides.append(f"data.{name}={json.dumps(getattr(args, name))}")
    if getattr(args, "report_to", None):
        overrides.append(f"train.report_to={json.dumps(args.report_to)}")
    return load_recipe(args.recipe, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from .run import run_recipe

    if not args.out.strip():
        raise PlmtuneError("--out is empty; name a new or empty folder for the run (an empty --out would write "
                           "into the current folder).")
    from .loading import check_requirements

    recipe = _recipe(args)
    check_requirements(recipe)  # a missing optional package (peft, a tracker's) stops the run before any model loads
    result = run_recipe(recipe, args.data, args.out, progress=sys.stderr.isatty(), save_model=args.save_model,
                        resume=args.resume, overwrite=args.overwrite)
    print(run_summary(recipe.name, result, Path(args.out), args.save_model))
    return 0


def run_summary(name: str, result: dict, out: Path, saved_model: bool = False) -> str:
    """The one line `plmtune run` ends with: the scores, the best epoch, the train time, what it wrote."""
    test, dev = result["test"] or {}, result["dev"] or {}

    def find(key: str):  # result.json has the stage's details at the top level; older ones under "details"
        return result.get(key, (result.get("details") or {}).get(key))

    epoch, seconds = find("best_epoch"), find("train_seconds")
    nan = float("nan")
    return (f"{name} on {result['task']} (seed {result['seed']}): test accuracy {test.get('accuracy', nan):.4f}, "
            f"macro-F1 {test.get('macro_f1', nan):.4f}, MCC {test.get('mcc', nan):.4f}; best dev accuracy "
            f"{dev.get('accuracy', nan):.4f}" + (f" at epoch {epoch}" if epoch is not None else "")
            + (f"; trained in {seconds:.1f} s" if seconds is not None else "") + ". "
            + (f"Model: {out / 'model'}. " if saved_model else "") + f"Wrote {out / 'result.json'}")


def cmd_pretrain(args: argparse.Namespace) -> int:
    import dataclasses

    from .stages.pretrain import run_pretrain_stage

    recipe = _recipe(args)
    cfg = recipe.stage("pretrain")
    if cfg is None:
        raise PlmtuneError(f"Recipe '{recipe.name}' has no pretrain section; use 'tapt', 'tapt_static', "
                           "'tapt_selective' or add one.")
    data = Path(args.data)
    if data.is_file():  # a domain corpus (DAPT) rather than a task folder (TAPT)
        cfg, data = dataclasses.replace(cfg, corpus=str(data)), None
    record = run_pretrain_stage(cfg, recipe.model.backbone, data, args.out, recipe.data, recipe.train.seed,
                                progress=sys.stderr.isatty())
    print(f"pretrain ({record['masking']} masking) on {record['texts']} texts: {record['steps']} steps "
          f"({record['stopped']}), best held-out MLM loss {record['best_heldout_loss']:.4f} at step "
          f"{record['best_step']}, {record['seconds']:.0f} s. Backbone: {record['model']} "
          f"(use it with --set model.backbone={record['model']})")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .loading import check_requirements, load_recipe

    failed = 0
    for path in args.recipes:
        try:
            recipe = load_recipe(path, args.set or [])
            check_requirements(recipe)
        except PlmtuneError as err:
            print(f"{path}: INVALID: {err}", file=sys.stderr)
            failed += 1
        else:
            names = ", ".join(t.name for t in recipe.techniques) or "none"
            # pre-training first, as it runs (the recipe keeps the training stage first)
            stages = sorted((s.name for s in recipe.stages), key=lambda name: name != "pretrain")
            staged = f"; stages: {', '.join(stages)}" if stages else ""
            print(f"{path}: ok (recipe '{recipe.name}', techniques: {names}{staged})")
    return 2 if failed else 0


def cmd_show(args: argparse.Namespace) -> int:
    from .recipe_io import recipe_to_yaml

    print(recipe_to_yaml(_recipe(args)), end="")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .config import RECIPES_DIR
    from .recipe_io import read_raw_recipe
    from .stages import registry as stages
    from .techniques import registry

    def items(what: str) -> dict[str, str]:
        if what == "techniques":
            return {name: (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
                    for name, cls in registry().items()}
        if what == "stages":
            return {name: f"[{cls.kind}] {cls.summary}" for name, cls in stages().items()}
        return {path.stem: str(read_raw_recipe(path).get("description", "")) for path in RECIPES_DIR.glob("*.yaml")}

    headings = args.what is None  # all three, each under its heading
    for i, what in enumerate(LISTS if headings else [args.what]):
        if headings:
            print(("\n" if i else "") + f"{what}:")
        found = items(what)
        for name in sorted(found):
            if fnmatch.fnmatch(name, args.pattern):
                print(f"{'  ' if headings else ''}{name:20s} {found[name]}")
    return 0


def cmd_fewshot(args: argparse.Namespace) -> int:
    from .config import DataConfig
    from .fewshot import make_fewshot

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise PlmtuneError(f"--seeds must be comma-separated integers, got '{args.seeds}'.") from None
    cfg = DataConfig(text_field=args.text_field, text_pair_field=args.text_pair_field, label_field=args.label_field)
    for path in make_fewshot(args.src, args.out, args.k, seeds, cfg):
        meta = json.loads((path / "meta.json").read_text())
        print(f"{path}: {meta['counts']}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .tune import tune

    summary = tune(_recipe(args), args.data, args.out, args.budget, args.seed if args.seed is not None else 42,
                   args.trials)
    values = ", ".join(f"{k}={v:.4g}" for k, v in summary["best_values"].items())
    print(f"{len(summary['trials'])} trials; best dev {summary['best_dev']:.4f} with {values}; "
          f"test accuracy {(summary['final_test'] or {}).get('accuracy', float('nan')):.4f}. "
          f"Wrote {Path(args.out) / 'tune.json'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), seeds=[int(s) for s in args.seeds.split(",")], progress=sys.stderr.isatty())
    return 0


def cmd_peer(args: argparse.Namespace) -> int:
    from .bench.peers import run_peer
    from .rundir import prepare_out_dir, write_json_atomic

    out = Path(args.out)
    prepare_out_dir(out)
    result = run_peer(args.name, args.data, args.seed, args.backbone, args.teacher_backbone)
    write_json_atomic(out / "result.json", result)
    print(f"{args.name} on {result['task']} (seed {args.seed}): test accuracy "
          f"{(result['test'] or {}).get('accuracy', float('nan')):.4f}. Wrote {out / 'result.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.runner import run_suite
    from .bench.suite import load_suite

    if args.executor != "ray" and (args.ray_address or args.cpus_per_run != 1 or args.gpus_per_run):
        raise PlmtuneError("--ray-address, --cpus-per-run and --gpus-per-run are for --executor ray.")
    suite = load_suite(args.suite, data_root=args.data_root)
    methods = args.methods.split(",") if args.methods else None
    unknown = sorted(set(methods or []) - {m.name for m in suite.methods})
    if unknown:
        raise PlmtuneError(f"--methods: {', '.join(unknown)} not in suite {suite.name}.")
    ray = {"address": args.ray_address, "cpus_per_run": args.cpus_per_run, "gpus_per_run": args.gpus_per_run}
    counts = run_suite(suite, Path(args.out), jobs=args.jobs, only=args.only, progress=True, methods=methods,
                       executor=args.executor, timeout=args.timeout, ray=ray)
    print(f"bench {suite.name}: {counts['total']} runs, {counts['skipped']} already done, {counts['ran']} ran, "
          f"{counts['failed']} failed. Report: plmtune report {args.out}")
    return 1 if counts["failed"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .bench.report import write_report

    md, page = write_report(Path(args.dir), args.baseline, metric=args.metric)
    print(f"Wrote {md} and {page}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the project's one-paragraph rule) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # "argument --seeds: must be ..." reads better as "--seeds must be ..." (the types below say "must").
        match = re.fullmatch(r"argument (\S+): (must .*)", message, flags=re.DOTALL)
        if match:
            message = f"{match.group(1)} {match.group(2)}"
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def seed_list(text: str) -> str:
    """argparse type of --seeds: comma-separated integers, at least one; returned as '13,21'."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        seeds = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got '{text}'") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"must list at least one seed, got '{text}'")
    return ",".join(str(seed) for seed in seeds)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'")
    return value


def _number(text: str, ok, what: str, unit: str = "") -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and ok(value)):  # NaN would never time out, inf never either
        raise argparse.ArgumentTypeError(f"must be a {what}, finite number{unit}, got '{text}'")
    return value


def positive_minutes(text: str) -> float:
    return _number(text, lambda v: v > 0, "positive", " of minutes")


def positive_float(text: str) -> float:
    return _number(text, lambda v: v > 0, "positive")


def nonnegative_float(text: str) -> float:
    return _number(text, lambda v: v >= 0, "non-negative")


def directory(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return text


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each option's default after its help, where it has one to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default is None or action.default is argparse.SUPPRESS \
                or action.nargs == 0:  # flags: their default is 'off'
            return text
        return f"{text} (default: %(default)s)"


def _log_options() -> argparse.ArgumentParser:
    """-v/-q, accepted before and after the subcommand; the last one given wins.

    SUPPRESS as the default: a subcommand's parser that did not see the flag leaves the value the
    top-level parser set alone.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.INFO,
                        default=argparse.SUPPRESS, help="log at INFO level")
    common.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.ERROR,
                        default=argparse.SUPPRESS, help="log errors only")
    return common


_COMMON = _log_options()


def add_command(sub: argparse._SubParsersAction, name: str, summary: str, func=None) -> argparse.ArgumentParser:
    """Add subcommand `name` (with -v/-q and the help format of the others) that runs `func`."""
    p = sub.add_parser(name, help=summary, description=summary, parents=[_COMMON], formatter_class=_Formatter)
    if func is not None:
        p.set_defaults(func=func)
    return p


def recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a recipe file or the name of a shipped recipe (see 'plmtune list recipes')")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.lr=3e-5 (repeatable; ~KEY deletes)")


def report_to_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report-to", nargs="+", metavar="TRACKER",
                   help="log metrics to these experiment trackers through Accelerate (tensorboard, wandb, mlflow, "
                        "comet_ml, aim, clearml, dvclive, or all); tensorboard writes to OUT/tracking/ "
                        "(overrides train.report_to)")


def data_field_args(p: argparse.ArgumentParser, defaults: DataConfig | None = None) -> None:
    """--text-field, --text-pair-field, --label-field: recipe overrides, or (with `defaults`) plain options."""
    for name, what in DATA_FIELDS.items():
        p.add_argument(f"--{name.replace('_', '-')}", default=getattr(defaults, name, None), metavar="FIELD",
                       help=f"{what} in the data files" + ("" if defaults else f" (overrides data.{name})"))


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand. A new one: ``p = add_command(sub, name, summary, func)``, then its arguments."""
    from .version import __version__
    from .bench.executors import EXECUTORS
    from .config import DataConfig

    parser = _Parser(prog="plmtune", description=DESCRIPTION, epilog=EPILOG, parents=[_COMMON],
                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"plmtune {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of these ('plmtune COMMAND --help' for its options):")

    p = add_command(sub, "run", "fine-tune a recipe on a task folder and write OUT/result.json", cmd_run)
    recipe_args(p)
    p.add_argument("--data", required=True, help="task folder with train/dev/test files")
    p.add_argument("--out", required=True, help="output folder for result.json and metrics.jsonl")
    p.add_argument("--seed", type=int, help="overrides train.seed")
    data_field_args(p)
    p.add_argument("--save-model", action="store_true",
                   help="also save the tested model to OUT/model (load it with plmtune predict / plmtune.load; "
                        "transformers too where its head allows, see docs/usage.md)")
    report_to_arg(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint (written every train.checkpoint_every steps)")
    p.add_argument("--overwrite", action="store_true",
                   help="re-run into a folder holding a finished run (its outputs are replaced once the new run succeeds)")

    p = add_command(sub, "pretrain", "further pre-training (MLM) on a task folder (TAPT) or a text file (DAPT)",
                    cmd_pretrain)
    recipe_args(p)
    p.add_argument("--data", required=True, help="task folder (train + unlabeled text) or a .txt/.jsonl corpus")
    p.add_argument("--out", required=True, help="output folder: OUT/model (a backbone) and OUT/pretrain.json")
    p.add_argument("--seed", type=int, help="overrides train.seed")
    data_field_args(p)

    p = add_command(sub, "validate", "check recipes without loading any model", cmd_validate)
    p.add_argument("recipes", nargs="+", help="recipe files or names of shipped recipes")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a value in every recipe, e.g. --set train.lr=3e-5 (repeatable; ~KEY deletes)")

    p = add_command(sub, "show", "print a resolved recipe", cmd_show)
    recipe_args(p)
    data_field_args(p)

    p = add_command(sub, "list", "list techniques, stages and shipped recipes", cmd_list)
    p.add_argument("what", nargs="?", choices=LISTS, help="list only these (default: all three)")
    p.add_argument("pattern", nargs="?", default="*", help="glob over the names")

    p = add_command(sub, "data", "data preparation")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND",
                                help="one of these ('plmtune data COMMAND --help' for its options):")
    q = add_command(data_sub, "fewshot", "LM-BFF few-shot splits: K per class for train and for dev", cmd_fewshot)
    q.add_argument("src", help="dataset folder (train/dev/test or a single all.* file)")
    q.add_argument("out", help="output folder; one subfolder K-SEED per seed")
    q.add_argument("--k", type=int, default=16, help="examples per class")
    q.add_argument("--seeds", type=seed_list, default="13,21,42,87,100", help="comma-separated seeds")
    data_field_args(q, DataConfig())

    p = add_command(sub, "peer", "run a peer baseline (majority, linear_probe, setfit, setfit_distill) on a task "
                    "folder", cmd_peer)
    p.add_argument("name", choices=("majority", "linear_probe", "setfit", "setfit_distill"), help="the peer baseline")
    p.add_argument("--data", required=True, help="task folder with train/dev/test files")
    p.add_argument("--out", required=True, help="output folder for result.json")
    p.add_argument("--seed", type=int, default=42, help="seed of the peer's training and sampling")
    p.add_argument("--backbone", default="minilm",
                   help="sentence encoder of linear_probe and setfit (setfit_distill's student)")
    p.add_argument("--teacher-backbone", default="mpnet", help="setfit_distill's teacher body")

    p = add_command(sub, "bench", "run a suite: methods x tasks x K x seeds, each run in its own process",
                    cmd_bench)
    p.add_argument("suite", help="a suite file, or the name of a shipped one (smoke, fewshot, cost)")
    p.add_argument("--out", required=True, help="bench folder; a re-run skips finished runs")
    p.add_argument("--data-root", type=directory,
                   help="folder holding the suite's task folders (default: the suite's data_root)")
    p.add_argument("-j", "--jobs", type=positive_int, default=1, help="runs at once (each then gets 1 CPU thread)")
    p.add_argument("--only", help="glob over run labels, e.g. 'sst2 K=16 *'")
    p.add_argument("--methods", help="comma-separated method names to run (default: all)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: a fresh process per run; warm: each run forked from a worker that has done the "
                        "imports once; ray: each run a Ray task (a local Ray of -j runs, or --ray-address)")
    p.add_argument("--timeout", type=positive_float, default=None,
                   help="seconds after which a run is killed and recorded as failed (default: none)")
    p.add_argument("--ray-address", default=None,
                   help="a running Ray cluster (e.g. ray://head:10001 or auto); default: start a local Ray")
    p.add_argument("--cpus-per-run", type=positive_int, default=1,
                   help="CPUs each Ray task declares (also its torch threads)")
    p.add_argument("--gpus-per-run", type=nonnegative_float, default=0.0,
                   help="GPUs each Ray task declares (fractions share a GPU)")

    p = add_command(sub, "report", "report.md and report.html from a bench folder", cmd_report)
    p.add_argument("dir", help="a bench folder ('plmtune bench --out')")
    p.add_argument("--baseline", help="compare with this method instead of the suite's baseline")
    p.add_argument("--metric", choices=["accuracy", "macro_f1", "mcc"], default=None,
                   help="the metric the differences and intervals are computed in (default: each task's own: MCC "
                        "for cola, accuracy elsewhere)")

    p = add_command(sub, "tune", "search LR and technique knobs on dev with Optuna, then test once", cmd_tune)
    recipe_args(p)
    p.add_argument("--data", type=directory, required=True, help="task folder with train and dev splits")
    p.add_argument("--out", required=True, help="output folder for tune.json and one folder per trial")
    p.add_argument("--budget", type=positive_minutes, required=True, help="minutes of search")
    p.add_argument("--trials", type=positive_int, help="stop after this many trials")
    p.add_argument("--seed", type=int, help="seed of the search and of every trial (default: 42)")
    data_field_args(p)

    p = add_command(sub, "demo", "offline demo: baseline vs LLRD over 3 seeds on a dataset shipped with plmtune",
                    cmd_demo)
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--seeds", type=seed_list, default="13,21,42", help="comma-separated seeds")

    from .cli_model import add_model_commands

    add_model_commands(sub, add_command)  # predict, evaluate, export
    return parser


def _logging_around_progress_bars(level: int):
    """Log lines written through tqdm while logging at INFO or below, so that they do not break a progress bar."""
    if level > logging.INFO:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # a usage error (exit 2) or --help (exit 0): return it like any other code
        return 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 2
    level = getattr(args, "log_level", logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with _logging_around_progress_bars(level):
            return args.func(args)
    except PlmtuneError as err:
        print(f"plmtune: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # A full disk or a vanished folder mid-run: say which file, keep the paragraph short.
        # Promise nothing about partial files here: not every file every command writes is atomic.
        where = err.filename if err.filename else "a file"
        print(f"plmtune: error: could not read or write {where}: {err.strerror or err}. A file being written at "
              "that moment may be incomplete, except those plmtune writes through a temp file and a rename "
              "(result.json, bench.json, suite.json, few-shot splits, report.md/html), which are whole or absent.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("plmtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
