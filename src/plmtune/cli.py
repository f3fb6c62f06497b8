"""The `plmtune` command. Each subcommand is one plain function; user errors exit 2 with one paragraph."""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import re
import sys
from pathlib import Path

from .errors import PlmtuneError


def _recipe(args: argparse.Namespace):
    from .loading import load_recipe

    overrides = list(args.set or [])
    if getattr(args, "seed", None) is not None:
        overrides.append(f"train.seed={args.seed}")
    return load_recipe(args.recipe, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from .run import run_recipe

    if not args.out.strip():
        raise PlmtuneError("--out is empty; name a new or empty folder for the run (an empty --out would write "
                           "into the current folder).")
    recipe = _recipe(args)
    result = run_recipe(recipe, args.data, args.out, progress=sys.stderr.isatty(), save_model=args.save_model,
                        resume=args.resume, overwrite=args.overwrite)
    test = result["test"] or {}
    dev = result["dev"] or {}
    print(f"{recipe.name} on {result['task']} (seed {result['seed']}): "
          f"test accuracy {test.get('accuracy', float('nan')):.4f}, macro-F1 {test.get('macro_f1', float('nan')):.4f}, "
          f"MCC {test.get('mcc', float('nan')):.4f}; best dev accuracy {dev.get('accuracy', float('nan')):.4f}. "
          f"Wrote {Path(args.out) / 'result.json'}")
    return 0


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

    if args.what == "techniques":
        items = {name: (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
                 for name, cls in registry().items()}
    elif args.what == "stages":
        items = {name: f"[{cls.kind}] {cls.summary}" for name, cls in stages().items()}
    else:
        items = {path.stem: str(read_raw_recipe(path).get("description", ""))
                 for path in RECIPES_DIR.glob("*.yaml")}
    for name in sorted(items):
        if fnmatch.fnmatch(name, args.pattern):
            print(f"{name:20s} {items[name]}")
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
    result = run_peer(args.name, args.data, args.seed, args.backbone)
    write_json_atomic(out / "result.json", result)
    print(f"{args.name} on {result['task']} (seed {args.seed}): test accuracy "
          f"{(result['test'] or {}).get('accuracy', float('nan')):.4f}. Wrote {out / 'result.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.runner import run_suite
    from .bench.suite import load_suite

    suite = load_suite(args.suite, data_root=args.data_root)
    methods = args.methods.split(",") if args.methods else None
    unknown = sorted(set(methods or []) - {m.name for m in suite.methods})
    if unknown:
        raise PlmtuneError(f"--methods: {', '.join(unknown)} not in suite {suite.name}.")
    counts = run_suite(suite, Path(args.out), jobs=args.jobs, only=args.only, progress=True, methods=methods)
    print(f"bench {suite.name}: {counts['total']} runs, {counts['skipped']} already done, {counts['ran']} ran, "
          f"{counts['failed']} failed. Report: plmtune report {args.out}")
    return 1 if counts["failed"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .bench.report import write_report

    md, page = write_report(Path(args.dir), args.baseline)
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


def positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):  # NaN would never time out, inf never either
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of minutes, got '{text}'")
    return value


def directory(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="plmtune", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    def recipe_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("recipe", help="a recipe file or the name of a shipped recipe (see 'plmtune list recipes')")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set train.lr=3e-5 (repeatable; ~KEY deletes)")

    p = sub.add_parser("run", help="fine-tune a recipe on a task folder and write OUT/result.json")
    recipe_args(p)
    p.add_argument("--data", required=True, help="task folder with train/dev/test files")
    p.add_argument("--out", required=True, help="output folder for result.json and metrics.jsonl")
    p.add_argument("--seed", type=int, help="overrides train.seed")
    p.add_argument("--save-model", action="store_true", help="also save the best model to OUT/model")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint (written every train.checkpoint_every steps)")
    p.add_argument("--overwrite", action="store_true",
                   help="re-run into a folder holding a finished run (its outputs are replaced once the new run succeeds)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("pretrain", help="further pre-training (MLM) on a task folder (TAPT) or a text file (DAPT)")
    recipe_args(p)
    p.add_argument("--data", required=True, help="task folder (train + unlabeled text) or a .txt/.jsonl corpus")
    p.add_argument("--out", required=True, help="output folder: OUT/model (a backbone) and OUT/pretrain.json")
    p.add_argument("--seed", type=int, help="overrides train.seed")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("validate", help="check recipes without loading any model")
    p.add_argument("recipes", nargs="+")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("show", help="print a resolved recipe")
    recipe_args(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("list", help="list techniques, stages or shipped recipes")
    p.add_argument("what", choices=("techniques", "recipes", "stages"))
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("data", help="data preparation")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("fewshot", help="LM-BFF few-shot splits: K per class for train and for dev")
    q.add_argument("src", help="dataset folder (train/dev/test or a single all.* file)")
    q.add_argument("out", help="output folder; one subfolder K-SEED per seed")
    q.add_argument("--k", type=int, default=16, help="examples per class (default 16)")
    q.add_argument("--seeds", type=seed_list, default="13,21,42,87,100", help="comma-separated seeds")
    q.add_argument("--text-field", default="text")
    q.add_argument("--text-pair-field", default="text_pair")
    q.add_argument("--label-field", default="label")
    q.set_defaults(func=cmd_fewshot)

    p = sub.add_parser("peer", help="run a peer baseline (majority, linear_probe, setfit) on a task folder")
    p.add_argument("name", choices=("majority", "linear_probe", "setfit"))
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--backbone", default="minilm")
    p.set_defaults(func=cmd_peer)

    p = sub.add_parser("bench", help="run a suite: methods x tasks x K x seeds, each run in its own process")
    p.add_argument("suite", help="a suite file, or the name of a shipped one (smoke, fewshot, cost)")
    p.add_argument("--out", required=True, help="bench folder; a re-run skips finished runs")
    p.add_argument("--data-root", type=directory,
                   help="folder holding the suite's task folders (default: the suite's data_root)")
    p.add_argument("-j", "--jobs", type=positive_int, default=1, help="runs at once (each then gets 1 CPU thread)")
    p.add_argument("--only", help="glob over run labels, e.g. 'sst2 K=16 *'")
    p.add_argument("--methods", help="comma-separated method names to run (default: all)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="report.md and report.html from a bench folder")
    p.add_argument("dir")
    p.add_argument("--baseline", help="compare with this method instead of the suite's baseline")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("tune", help="search LR and technique knobs on dev with Optuna, then test once")
    recipe_args(p)
    p.add_argument("--data", type=directory, required=True, help="task folder with train and dev splits")
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=positive_minutes, required=True, help="minutes of search")
    p.add_argument("--trials", type=positive_int, help="stop after this many trials")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("demo", help="offline demo: baseline vs LLRD over 3 seeds on a dataset shipped with plmtune")
    p.add_argument("--out", default="demo_out", help="output folder (default ./demo_out)")
    p.add_argument("--seeds", type=seed_list, default="13,21,42", help="comma-separated seeds")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # a usage error (exit 2) or --help (exit 0): return it like any other code
        return 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
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
