"""`relvit` command line: the entry point the Snakemake rules (and people) call.

    relvit MODE --config RUN.yaml --out RUN_DIR [--init best.pt] [--execution E.yaml]
                 MODE: pretrain, finetune, supervised, joint or detect
    relvit check --config RUN.yaml [--mode MODE]   validate a run config, print it resolved
    relvit check-workflow config/ci.yaml [config/ci-spread.yaml]   validate workflow configs
    relvit prepare-data NAME [--root data] [--offline]   download, verify, extract, check
    relvit resize-images data/imagenet100 data/imagenet100-s256 --shorter-side 256
    relvit report --table1 results/tables/table1 [--tier smoke] RUN_DIR_OR_METRICS...
    relvit report-detection --plan results/tables/detection-plan.json --out results/tables
    relvit regress results/ci/runs --expected results/expected/ci.yaml [--refresh]
    relvit compare --out results/tables/compare [--plan PLAN.json] RUN_CONFIGS_AND_METRICS...
    relvit figures --out results/figures [--plan PLAN.json] RUN_CONFIGS_AND_METRICS... --curves M...

An error the command can name (a config, file, key or value) is printed as one line, "relvit:
error: ...", exit status 1 (2 for a config); with RELVIT_TRACEBACK=1 in the environment it is
raised instead, traceback and all (`TRACEBACK_VARIABLE`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from relvit.atomic import atomic_write_text
from relvit.config import (MODES, ConfigError, DataConfig, load_config, read_config_file,
                           read_settings_file)
from relvit.interrupts import Terminated, sigterm_as_interrupt
from relvit.layout import HISTORY, PAPER_TABLES, PRINTED_IMPROVEMENTS

log = logging.getLogger("relvit")


def _load_run_config(args: argparse.Namespace, mode: str | None):
    """The run config of --config, --set, --init and --device; `mode` (the command's) must agree
    with the file's."""
    overrides = list(args.set or [])
    execution = getattr(args, "execution", None)
    values = {}  # as given, not parsed as YAML (a path may hold " #" or be "yes")
    if mode is not None:
        raw_mode = read_config_file(args.config).get("mode")  # ConfigError naming a bad file
        if raw_mode is not None and raw_mode != mode:
            raise ConfigError([f"mode: {args.config} says {raw_mode!r} but the command is "
                               f"{mode!r}"])
        values["mode"] = mode
    if getattr(args, "init", None):
        values["init_checkpoint"] = str(args.init)
    if getattr(args, "device", None):
        values["device"] = args.device
    return load_config(args.config, overrides, values, execution)


def _train(args: argparse.Namespace) -> int:
    import torch

    from relvit.train.errors import NonFiniteLossError, UpstreamFailedError
    from relvit.train.loop import train

    cfg = _load_run_config(args, args.command)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train(cfg, args.out, progress=False if args.no_progress else None,
              replace_changed=args.replace_changed)
    except (NonFiniteLossError, UpstreamFailedError) as err:
        if not args.record_failure:
            raise
        from relvit.train.failure import record_failure

        record_failure(cfg, args.out, err)
        log.error("run %s failed: %s; recorded in %s/metrics.json as failed", args.out, err,
                  args.out)
    return 0


def _check(args: argparse.Namespace) -> int:
    from relvit.execution import execution_file_of
    from relvit.train.errors import FINETUNE_NEEDS_INIT

    written = None if args.execution else execution_file_of(args.config)
    if written:
        log.warning("%s: its execution keys (device, compile, ...) are shown as it gives them, "
                    "defaults where it does not; the workflow's job reads them from %s (pass "
                    "--execution %s to see those)", args.config, written, written)
    cfg = _load_run_config(args, args.mode)
    if cfg.mode == "finetune" and not cfg.init_checkpoint:  # as the run's start refuses it
        raise ConfigError([FINETUNE_NEEDS_INIT], str(args.config))
    if cfg.init_checkpoint and not Path(cfg.init_checkpoint).is_file():
        log.warning("init_checkpoint: %s is not a file (yet): the run refuses to start until it "
                    "is (a workflow's pretrain run writes it)", cfg.init_checkpoint)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    print(_derived(cfg))
    return 0


def _derived(cfg) -> str:
    """What the config's nulls and the mode come to: the backbone (its patch among them),
    positional embeddings, and outside detection the image size and SSL grid."""
    from relvit.geometry import backbone_label, run_geometry

    geo = run_geometry(cfg)
    facts = [f"backbone {backbone_label(cfg, geo)}",
             f"positional embeddings {'on' if cfg.pos_embed else 'off'}"]
    if cfg.mode != "detect":
        facts.append(f"image_size {geo.image_size}")
    if cfg.uses_ssl:
        side = geo.megapatch_side or geo.ssl_grid
        facts.append(f"SSL grid {side}x{side} ({geo.num_positions} positions)")
    return "# derived (dataset registry, backbone preset, mode): " + ", ".join(facts)


def _check_workflow(args: argparse.Namespace) -> int:
    from collections import Counter

    from relvit.workflow import check_workflow_files

    runs = check_workflow_files(args.configfiles, str(args.schema), str(args.paper))
    modes = Counter(run.mode for run in runs.values())
    print(f"{', '.join(args.configfiles)}: valid; {len(runs)} runs planned ("
          + ", ".join(f"{n} {mode}" for mode, n in sorted(modes.items())) + ")")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from relvit.data.prepare import prepare_dataset

    offline = args.offline
    if args.execution:
        setting = read_settings_file(args.execution, ("data.offline",)).get("data.offline")
        if not isinstance(setting, (bool, type(None))):
            raise ConfigError([f"{args.execution}: data.offline: expected true or false, got "
                               f"{setting!r}"], "settings file")
        offline = offline or bool(setting)
    prepare_dataset(args.name, args.root, folder=args.folder, offline=offline,
                    extract_again=args.extract_again)
    return 0


def _folder(text: str) -> Path:
    """An argparse type: a folder to write in, which may not exist yet but is no file (a file
    had given "[Errno 17] File exists" after a complaint about its train.log)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a file, not a folder")
    return path


def _at_least(minimum: int):
    """An argparse type: a whole number of at least `minimum` (a clear usage error, not a
    traceback from deep inside torch or a process pool)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {minimum}, "
                                             f"got {text!r}")
        return value

    return parse


def _resize(args: argparse.Namespace) -> int:
    from relvit.data.resize import ResizeSettings, resize_tree

    settings = (ResizeSettings(args.shorter_side) if args.quality is None
                else ResizeSettings(args.shorter_side, args.quality))
    resize_tree(args.src, args.dst, settings, workers=args.workers)
    return 0


def _report(args: argparse.Namespace) -> int:
    from relvit.report.table1 import write_table1

    write_table1(args.runs, args.table1, tier=args.tier, paper_csv=args.paper)
    return 0


def _report_detection(args: argparse.Namespace) -> int:
    from relvit.report.detection_tables import write_detection_tables

    write_detection_tables(args.plan, args.out, tier=args.tier, paper_csv=args.paper)
    return 0


def _regress(args: argparse.Namespace) -> int:
    from relvit.report import expected

    for_refresh = {"--spread": args.spread, "--tier": args.tier, "--tier-config": args.tier_config}
    given = [option for option, value in for_refresh.items() if value is not None]
    if given and not args.refresh:  # had been ignored without a word
        raise ValueError(f"{', '.join(given)}: only with --refresh")
    runs = expected.collect(args.runs)
    if args.refresh:
        spread = expected.collect(args.spread) if args.spread else None
        cells = expected.expected_cells(runs, spread)
        expected.write_expected(args.expected, cells, args.tier or "ci",
                                args.tier_config or "config/ci.yaml")
        log.info("wrote %s (%d cells)", args.expected, len(cells))
        return 0
    results = expected.check(expected.read_expected(args.expected), runs)
    report = expected.format_checks(results)
    print(report, end="")
    if args.report:
        atomic_write_text(report, args.report)
    return 1 if any(r.failed for r in results) else 0


def _cells(args: argparse.Namespace):
    from relvit.report.compare import Criterion, compare

    criterion = Criterion(args.sigmas, args.tolerance)
    return compare(args.runs, args.plan, args.paper, criterion), criterion


def _compare(args: argparse.Namespace) -> int:
    from relvit.report.compare import improvement_checks, write_compare

    cells, criterion = _cells(args)
    improvements = args.improvements or args.paper.with_name(Path(PRINTED_IMPROVEMENTS).name)
    write_compare(cells, improvement_checks(args.paper, improvements), args.out, args.tier,
                  criterion)
    failed = [c for c in cells if c.failed]
    for c in failed:
        print(f"relvit compare: OUT: table {c.table} {c.dataset} {c.backbone} {c.method} "
              f"{c.metric}: {c.ours.mean:.2f} vs paper {c.paper.mean:.2f} (|Δ| > {c.bound:.2f}, "
              f"{c.rule})", file=sys.stderr)
    for c in cells:
        if c.provenance.get("stale"):
            print(f"relvit compare: stale: {c.provenance['stale']}", file=sys.stderr)
    log.info("wrote %s.md/.csv: %d cells, %d out of tolerance", args.out, len(cells), len(failed))
    return 1 if failed and not args.no_fail else 0


def _figures(args: argparse.Namespace) -> int:
    from relvit.report.figures import write_figures

    cells, _ = _cells(args)
    tables = sorted({c.table for c in cells})
    written = write_figures(cells, tables, args.curves or [], args.out, args.tier)
    log.info("wrote %d figures to %s", len(written), args.out)
    return 0


def _cell_arguments(p: argparse.ArgumentParser, out_help: str) -> None:
    """The inputs of compare and figures: Table 1's sources, the detection plan, the paper."""
    from relvit.report.criterion import Criterion

    p.add_argument("runs", nargs="*", type=Path,
                   help="Table 1: metrics.json files and run configs (*.yaml: planned cells), "
                        "or folders searched for both")
    p.add_argument("--plan", type=Path,
                   help="Tables 2-3: the workflow's detection-plan.json")
    p.add_argument("--out", required=True, type=Path, help=out_help)
    _tier_argument(p, "the output")
    _paper_argument(p)
    p.add_argument("--sigmas", type=float, default=Criterion.sigmas,
                   help="k of |Δ| <= k·sqrt(σ_paper² + σ²) where the paper prints ± "
                        "(default %(default)s)")
    p.add_argument("--tolerance", type=float, default=Criterion.tolerance,
                   help="|Δ| in points allowed where the paper prints no ± (default %(default)s)")


def _paper_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--paper", type=Path, default=Path(PAPER_TABLES),
                   help="the paper's numbers (default %(default)s, from the repository's root)")


def _tier_argument(p: argparse.ArgumentParser, printed_with: str) -> None:
    p.add_argument("--tier", default="custom",
                   help=f"label printed with {printed_with} (default %(default)s)")


def _execution_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--execution", metavar="FILE",
                   help="a YAML file of execution keys (device, compile, data.workers, ...: "
                        "relvit.config.EXECUTION_KEYS) over the run config's, before --set; "
                        "the workflow's <results>/execution/<run>.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relvit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for mode in MODES:
        p = sub.add_parser(mode, help=f"train in mode {mode!r} (method spec §3)")
        p.add_argument("--config", required=True, help="run config YAML")
        p.add_argument("--out", required=True, type=_folder,
                       help="run directory (resumed if present)")
        p.add_argument("--init", help="a pretrain run's best.pt to start from (finetune, detect)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config key, e.g. optim.lr=1e-3 (repeatable)")
        _execution_argument(p)
        p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
        p.add_argument("--threads", type=_at_least(1), help="CPU threads for torch")
        p.add_argument("--no-progress", action="store_true", help="plain log lines only")
        p.add_argument("--replace-changed", action="store_true",
                       help="a run directory made with another config is moved aside "
                            "(<dir>.replaced-<time>) instead of refused")
        p.add_argument("--record-failure", action="store_true",
                       help="a non-finite loss (or a failed pretrain run to start from) is "
                            "recorded as a failed run in metrics.json and exits 0, so the "
                            "tables show the cell as failed (the workflow passes this)")
        p.set_defaults(func=_train)
    p = sub.add_parser("check", help="validate a run config and print it resolved")
    p.add_argument("--config", required=True, help="run config YAML")
    p.add_argument("--mode", choices=MODES,
                   help="check it for this mode, as `relvit MODE` would (default: its mode key)")
    p.add_argument("--init", help="the best.pt a finetune or detect run starts from, as "
                   "`relvit MODE --init` gives it")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. optim.lr=1e-3 (repeatable)")
    _execution_argument(p)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N, as `relvit MODE --device`")
    p.set_defaults(func=_check)
    p = sub.add_parser("check-workflow", help="validate workflow config files (what "
                       "`snakemake --configfile FILE...` would plan), naming file and line")
    p.add_argument("configfiles", nargs="+", metavar="FILE",
                   help="workflow config YAML files, merged in order as Snakemake merges them")
    p.add_argument("--schema", type=Path, default=Path("config/schema.yaml"),
                   help="the workflow config's schema (default %(default)s, from the "
                        "repository's root)")
    _paper_argument(p)
    p.set_defaults(func=_check_workflow)
    p = sub.add_parser("prepare-data", help="download, verify, extract and check a dataset")
    p.add_argument("name", help="dataset name (see relvit/data/registry.py)")
    p.add_argument("--root", default=DataConfig.root, type=_folder,
                   help="datasets live in ROOT/NAME (default %(default)s)")
    p.add_argument("--folder", help="the dataset's own folder instead (e.g. an imagefolder)")
    p.add_argument("--offline", action="store_true",
                   help="never download: verify the files already in place")
    p.add_argument("--extract-again", action="store_true",
                   help="unpack the checked archives anew (the layout check does not open every "
                        "image: use this when an image was found damaged or deleted)")
    p.add_argument("--execution", metavar="FILE",
                   help="a YAML file whose `data.offline: true` means --offline (the "
                        "workflow's ROOT/.relvit-prepare-data.yaml)")
    p.set_defaults(func=_prepare)
    p = sub.add_parser("resize-images", help="a copy of an image-file dataset with every "
                       "image's shorter side at most S (faster decoding; resumable)")
    p.add_argument("src", type=Path, help="the dataset's folder (e.g. data/imagenet100)")
    p.add_argument("dst", type=_folder, help="the copy's folder; point data.folder at it")
    p.add_argument("--shorter-side", type=int, required=True, metavar="S",
                   help="pixels, e.g. 256 for 224-px training crops")
    p.add_argument("--quality", type=int,
                   help="JPEG quality of resized JPEGs, 1..95 (default 90, as the resize module sets)")
    p.add_argument("--workers", type=_at_least(0),
                   help="processes (default: every core; 0: none)")
    p.set_defaults(func=_resize)
    p = sub.add_parser("report", help="gather run directories into Table 1 (Markdown + LaTeX)")
    p.add_argument("runs", nargs="+", type=Path,
                   help="metrics.json files and run configs (*.yaml: planned cells), or folders "
                        "searched for both")
    p.add_argument("--table1", required=True, type=Path, help="output path without suffix")
    _tier_argument(p, "the table, e.g. smoke")
    _paper_argument(p)
    p.set_defaults(func=_report)
    p = sub.add_parser("report-detection", help="render Tables 2-3 from a detection plan file")
    p.add_argument("--plan", required=True, type=Path,
                   help="rows and their metrics files (the workflow's detection-plan.json)")
    p.add_argument("--out", required=True, type=_folder,
                   help="folder for table<N>.md / .tex")
    _tier_argument(p, "the tables")
    _paper_argument(p)
    p.set_defaults(func=_report_detection)
    p = sub.add_parser("regress", help="check a tier's runs against its expected metrics "
                                       "(the CI regression guard), or --refresh them")
    p.add_argument("runs", type=Path, help="the tier's runs folder, e.g. results/ci/runs")
    p.add_argument("--expected", required=True, type=Path,
                   help="expected metrics, e.g. results/expected/ci.yaml")
    p.add_argument("--report", type=Path, help="also write the check table here (Markdown)")
    p.add_argument("--refresh", action="store_true",
                   help="write the expected file from these runs instead of checking")
    p.add_argument("--spread", type=Path,
                   help="with --refresh: runs of extra seeds, pooled for the seed spread")
    p.add_argument("--tier", help="with --refresh: the tier's name (default ci)")
    p.add_argument("--tier-config",
                   help="with --refresh: the workflow config the runs came from (default "
                        "config/ci.yaml)")
    p.set_defaults(func=_regress)
    p = sub.add_parser("compare", help="every planned cell of Tables 1-3 beside the paper's "
                                       "number: verdict and provenance (Markdown + CSV)")
    _cell_arguments(p, "the files' path without suffix (.md and .csv written)")
    p.add_argument("--improvements", type=Path,
                   help="the paper's printed Improv. values, checked against its numbers "
                        "(default: printed-improvements.csv beside --paper)")
    p.add_argument("--no-fail", action="store_true",
                   help="exit 0 even when a comparable cell is out of tolerance")
    p.set_defaults(func=_compare)
    p = sub.add_parser("figures", help="bar charts of Tables 1-3 vs the paper and the training "
                                       "curves of runs (PNG, PDF)")
    _cell_arguments(p, "the folder of the figures")
    p.add_argument("--curves", nargs="+", type=Path,
                   help="metrics.json files of the runs whose history.csv to draw")
    p.set_defaults(func=_figures)
    return parser


# set (non-empty) in the environment: the errors `main` prints as one line are raised instead
TRACEBACK_VARIABLE = "RELVIT_TRACEBACK"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s relvit: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    from relvit.data.download import DownloadError
    from relvit.train.errors import CheckpointError, TrainingError

    try:
        with sigterm_as_interrupt():
            return args.func(args)
    except ConfigError as err:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        print(f"relvit: error: {err}", file=sys.stderr)
        return 2
    except (CheckpointError, TrainingError, DownloadError, KeyError, ValueError, OSError) as err:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        # a KeyError's str() is the repr of its message, quotes and all
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"relvit: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # what was finished is kept (atomic writes)
        terminated = isinstance(err, Terminated)
        print(f"relvit: {'terminated (SIGTERM)' if terminated else 'interrupted'}; "
              f"{_what_is_kept(args)}", file=sys.stderr)
        return 143 if terminated else 130


def _what_is_kept(args: argparse.Namespace) -> str:
    """The interrupt message's second half: for a training run, the epochs it resumes after."""
    out = getattr(args, "out", None)
    if args.func is not _train or out is None:
        return "what was finished is kept: the same command goes on from there"
    history = Path(out) / HISTORY
    try:
        epochs = max(len(history.read_text(encoding="utf-8").splitlines()) - 1, 0)
    except (OSError, UnicodeDecodeError):
        epochs = 0
    if not epochs:
        return f"{out} has no finished epoch yet: the same command starts the run again"
    return (f"{out} keeps its {epochs} finished epoch{'s' if epochs > 1 else ''} (last.pt): the "
            "same command resumes after them")


if __name__ == "__main__":
    sys.exit(main())
