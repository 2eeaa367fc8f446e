"""Expand a workflow config (config/*.yaml) into the runs of Tables 1-3, each with its resolved
run config. The Snakefile reads this plan; nothing here trains anything.

Run ids are `<dataset>/<backbone>/<method>/seed<seed>`. Table 1 methods: pretrain, relvit
(finetune from that seed's pretrain), supervised, supervised_same_epochs, and pretrain_mega /
relvit_mega for the mega-patch variant. Tables 2-3 methods: det_<variant> detection runs and the
pretrain_det* runs their upstream variants start from (relvit.detection.plan).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from relvit.config import (ConfigError, DataConfig, OptimConfig, config_from_dict,
                           is_whole_number, merge)
from relvit.data.registry import DATASETS
from relvit.data.resize import resized_folder
from relvit.detection.plan import TableRow, table_rows
from relvit.layout import PAPER_TABLES, best_checkpoint, metrics_file, run_id, run_id_fields
from relvit.report.table1 import MEGAPATCHES, SAME_EPOCHS


METHOD_MODES = {"pretrain": "pretrain", "relvit": "finetune", "supervised": "supervised",
                "supervised_same_epochs": "supervised", "pretrain_mega": "pretrain",
                "relvit_mega": "finetune"}
PRETRAIN_OF = {"relvit": "pretrain", "relvit_mega": "pretrain_mega"}


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    dataset: str
    mode: str
    config: dict[str, Any]  # a validated RunConfig as a plain dict
    pretrain: str | None = None  # run id of the pretrain run a finetune starts from


def _stage(workflow: dict, stage: str, overrides: dict) -> dict:
    raw = merge(workflow.get("run", {}) or {}, (workflow.get("stages", {}) or {}).get(stage) or {})
    return merge(raw, overrides)


def _epochs(raw: dict) -> int | None:
    """The epochs of a raw run config, None where they are not a whole number (its validation
    names the key)."""
    optim = raw.get("optim")
    epochs = optim.get("epochs", OptimConfig.epochs) if isinstance(optim, dict) else None
    return epochs if is_whole_number(epochs) else None


def _methods(workflow: dict, dataset: str, base: dict) -> dict[str, dict]:
    """The raw run config of every method planned for one dataset and seed."""
    table = workflow["table1"]
    raw = {"pretrain": _stage(workflow, "pretrain", base),
           "relvit": _stage(workflow, "finetune", base),
           "supervised": _stage(workflow, "supervised", base)}
    pretrain_epochs, finetune_epochs = _epochs(raw["pretrain"]), _epochs(raw["relvit"])
    if table.get("same_epochs_baseline", False) and pretrain_epochs and finetune_epochs:
        epochs = pretrain_epochs + finetune_epochs
        raw["supervised_same_epochs"] = merge(
            raw["supervised"], {"label": SAME_EPOCHS, "optim": {"epochs": epochs}})
    mega = table.get("megapatch") or {}
    if dataset in mega.get("datasets", []):
        raw["pretrain_mega"] = merge(raw["pretrain"], {"label": MEGAPATCHES,
                                                       "ssl": {"megapatch_side": mega["side"]}})
        raw["relvit_mega"] = merge(raw["relvit"], {"label": MEGAPATCHES})
    return raw


def _add(runs: dict[str, PlannedRun], problems: list[str], run_id: str, dataset: str,
         raw: dict, pretrain: str | None = None) -> None:
    """Validate one run config and add it to the plan (once: tables share runs)."""
    if run_id in runs:
        return
    try:
        cfg = config_from_dict(raw, source=f"run {run_id}").to_dict()
    except ConfigError as err:
        problems += [f"run {run_id}: {p}" for p in err.problems]
        return
    runs[run_id] = PlannedRun(run_id, dataset, raw["mode"], cfg, pretrain)


def plan(workflow: dict, paper_csv: str = PAPER_TABLES, source: str = "workflow config"
         ) -> dict[str, PlannedRun]:
    """Every run of the workflow config: Table 1 and, when configured, Tables 2-3; the invalid
    run configs of both are reported together (ConfigError naming `source`, e.g. the file)."""
    runs: dict[str, PlannedRun] = {}
    problems = _shared_run_key_problems(workflow)
    parts = [(plan_table1, (workflow,))] if workflow.get("table1") else []
    parts += [(plan_detection, (workflow, paper_csv))] if workflow.get("detection") else []
    for part, args in parts:
        try:
            runs.update(part(*args))
        except ConfigError as err:
            problems += err.problems
    if problems:
        problems = [_with_blocks(problem, workflow) for problem in problems]
        raise ConfigError(collapse_run_problems(problems), source)
    return runs


def _run_key_blocks(workflow: dict, run: dict[str, str]) -> list[tuple[str, Any]]:
    """The workflow config's blocks of run keys that reach the run of id fields `run`
    (`run_id_fields`), by name, in the order they are merged (the last wins), each as a run
    config's keys: `run`, `stages.<stage>`, then `table1.run.<dataset>`, or for detection runs
    `detection.models.<backbone>` (model keys); last, the blocks whose values the planner sets
    over them (a mega-patch side, the same-epochs baseline's epochs)."""
    dataset, backbone, method = run["dataset"], run["backbone"], run["method"]
    detection = method.startswith(("pretrain_det", "det_"))
    stage = ("pretrain_detection" if method.startswith("pretrain_det") else
             "detect" if detection else METHOD_MODES.get(method, method))
    blocks = [("run", workflow.get("run")),
              (f"stages.{stage}", (workflow.get("stages") or {}).get(stage))]
    if detection:
        models = (workflow.get("detection") or {}).get("models") or {}
        blocks.append((f"detection.models.{backbone}", {"model": models.get(backbone)}))
    else:
        by_dataset = (workflow.get("table1") or {}).get("run") or {}
        blocks.append((f"table1.run.{dataset}", by_dataset.get(dataset)))
    set_side = {"ssl": {"megapatch_side": None}}  # a key present: the value is set there
    if method == "pretrain_mega":
        blocks.append(("table1.megapatch.side", set_side))
    elif method == "supervised_same_epochs":
        blocks.append(("table1.same_epochs_baseline", {"optim": {"epochs": None}}))
    elif method.startswith("pretrain_det"):
        mega = (workflow.get("detection") or {}).get("megapatch_side")
        blocks.append(("detection.megapatch_side" + (f".{backbone}" if isinstance(mega, dict)
                                                     else ""), set_side))
    return blocks


def _with_blocks(problem: str, workflow: dict) -> str:
    """A run's problem ("run ID: key.path: message") with the block of the workflow config
    whose value of that key reached the run, e.g. "(from stages.finetune)": the run ID alone
    does not say where to look."""
    run, sep, message = problem.removeprefix("run ").partition(": ")
    fields = run_id_fields(run)
    if not (problem.startswith("run ") and sep) or fields is None:
        return problem
    path = message.partition(": ")[0].split(".")
    given = None
    for name, keys in _run_key_blocks(workflow, fields):
        node: Any = keys
        for key in path:
            node = node.get(key, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is not _ABSENT:
            given = name
    return f"{problem} (from {given})" if given else problem


_ABSENT = object()


def collapse_run_problems(problems: list[str]) -> list[str]:
    """A problem that recurs in many runs ("run ID: key: message", e.g. a typo in the shared
    `run:` block) once, with how many runs and the first of them; the others as they are."""
    runs_of: dict[str, list[str]] = {}
    for problem in problems:
        run_id, sep, message = problem.removeprefix("run ").partition(": ")
        if problem.startswith("run ") and sep:
            runs_of.setdefault(message, []).append(run_id)
        else:
            runs_of.setdefault(problem, [])
    out = []
    for message, ids in runs_of.items():
        if len(ids) > 1:
            first = ", ".join(ids[:2]) + (", ..." if len(ids) > 2 else "")
            out.append(f"{len(ids)} runs ({first}): {message}")
        else:
            out.append(f"run {ids[0]}: {message}" if ids else message)
    return out


def schema_problems(workflow: dict, schema: dict) -> list[str]:
    """Every JSON-schema violation of a workflow config, as "key.path: message" lines; unknown
    keys name the allowed ones (and the closest), enums their allowed values."""
    import difflib

    from jsonschema import Draft202012Validator

    problems = []
    errors = Draft202012Validator(schema).iter_errors(workflow)
    for err in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        path = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = list(err.schema.get("properties", {}))
            for key in (k for k in err.instance if k not in allowed):
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{path + '.' if path else ''}{key}: unknown key{hint}; "
                                f"allowed: {', '.join(allowed)}")
        elif err.validator == "pattern":
            problems.append(f"{path}: {err.instance!r} does not match {err.validator_value!r}"
                            + (f"; {err.schema['description']}" if "description" in
                               err.schema else ""))
        elif err.validator == "enum":
            problems.append(f"{path or '<top>'}: {err.instance!r} is not one of "
                            f"{', '.join(map(repr, err.validator_value))}")
        else:
            problems.append(f"{path or '<top>'}: {err.message}")
    return problems


SCALARS = {**dict.fromkeys(("true", "True", "TRUE"), True),
           **dict.fromkeys(("false", "False", "FALSE"), False),
           **dict.fromkeys(("null", "Null", "NULL", "~"), None)}


def typed_config_values(given: Mapping[str, Any]) -> dict[str, Any]:
    """`snakemake --config` values with the strings inside a nested value typed: numbers as
    Snakemake types a top-level value (int, then float), and YAML's true, false and null.
    Snakemake reads a nested value with YAML's base loader, all strings, so `--config
    "data={'offline': true}"` had given the string 'true'. Other strings stay strings."""
    def typed(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: typed(item) for key, item in value.items()}
        if isinstance(value, list):
            return [typed(item) for item in value]
        if not isinstance(value, str):
            return value
        for number in (int, float):
            try:
                return number(value)
            except ValueError:
                pass
        return SCALARS.get(value, value)

    return {key: typed(value) if isinstance(value, (Mapping, list)) else value
            for key, value in given.items()}


def read_schema(path: str) -> dict:
    """The workflow config's JSON schema; ValueError naming the file when it is missing,
    unreadable or no JSON schema (another file given as --schema had ended in a traceback)."""
    from pathlib import Path

    import yaml
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        schema = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if not isinstance(schema, dict):
            raise ValueError(f"a {type(schema).__name__}, not a mapping")
        if "$schema" not in schema:  # snakemake.utils.validate needs it
            raise ValueError("no $schema key")
        Draft202012Validator.check_schema(schema)
    except (OSError, ValueError, yaml.YAMLError, SchemaError) as err:
        reason = err.strerror if isinstance(err, OSError) else str(err).splitlines()[0]
        raise ValueError(f"{path}: not a workflow config schema ({reason})") from None
    return schema


def check_workflow_config(workflow: dict, schema_path: str, paper_csv: str = PAPER_TABLES,
                          source: str = "workflow config") -> None:
    """Report every problem of a workflow config at once, before any job starts: the schema's
    and, as far as the config can be planned, those of every run config (ConfigError naming
    `source`)."""
    import copy

    from jsonschema import Draft202012Validator

    schema = read_schema(schema_path)
    problems = schema_problems(workflow, schema)
    if not problems:
        return  # the Snakefile validates (setting defaults) and plans, naming run problems
    # a plan of the blocks it walks, mistyped (a string for a list), says only noise
    mistyped = {str(err.absolute_path[0]) if err.absolute_path else ""
                for err in Draft202012Validator(schema).iter_errors(workflow)
                if err.validator == "type"}
    if mistyped & {"", "seeds", "table1", "detection", "data"}:
        raise ConfigError(problems, source)
    try:
        plan(copy.deepcopy(workflow), paper_csv)
    except ConfigError as err:
        problems += err.problems
    except Exception:  # noqa: BLE001 - a config the schema rejects may not plan at all
        pass
    raise ConfigError(problems, source)


def check_workflow_files(paths: list[str], schema_path: str, paper_csv: str = PAPER_TABLES
                         ) -> dict[str, PlannedRun]:
    """What `snakemake --configfile PATH...` would plan, checked before Snakemake reads the
    files (it names neither file nor line for a YAML error): each file read as a workflow config
    (duplicate keys refused, with line and column), merged in order, checked against the schema
    and planned; ConfigError naming the files and every problem."""
    from snakemake.utils import validate

    from relvit.config import read_config_file

    workflow: dict = {}
    for path in paths:
        workflow = merge(workflow, read_config_file(path, "workflow config"))
    source = "workflow config " + ", ".join(map(str, paths))
    check_workflow_config(workflow, schema_path, paper_csv, source)
    validate(workflow, schema_path)  # the schema's defaults, as the Snakefile sets them
    return plan(workflow, paper_csv, source)


def detection_rows(workflow: dict, paper_csv: str = PAPER_TABLES) -> list[TableRow]:
    """The rows of Tables 2-3 the workflow config's `detection` block plans (none without
    one)."""
    detection = workflow.get("detection")
    return table_rows(detection, paper_csv) if detection else []


def detection_seeds(workflow: dict) -> list[int]:
    """The seeds of Tables 2-3's runs: the detection block's own, else the workflow's."""
    return (workflow.get("detection") or {}).get("seeds", workflow["seeds"])


def plan_detection(workflow: dict, paper_csv: str = PAPER_TABLES) -> dict[str, PlannedRun]:
    """The detection runs of Tables 2-3 and the SSL pretrain runs they start from."""
    detection = workflow["detection"]
    root = (workflow.get("data", {}) or {}).get("root", DataConfig.root)
    results = workflow.get("results", "results")
    runs: dict[str, PlannedRun] = {}
    rows = detection_rows(workflow, paper_csv)
    backbones = list(dict.fromkeys(row.backbone for row in rows))
    models, mega = detection.get("models", {}) or {}, detection.get("megapatch_side", {})
    problems = _unplanned(models, backbones, "detection.models", "the tables' backbones")
    if isinstance(mega, dict):
        problems += _unplanned(mega, backbones, "detection.megapatch_side",
                               "the tables' backbones")
        problems += [f"detection.megapatch_side.{b}: missing, and the mega-patch rows of {b} "
                     "need it" for b in backbones
                     if b not in mega and any(r.variant.mega for r in rows if r.backbone == b)]
    for row in rows:
        variant, backbone, dataset = row.variant, row.backbone, row.run_dataset
        model = {"backbone": backbone, **models.get(backbone, {})}
        side = mega.get(backbone, 0) if isinstance(mega, dict) else mega
        for seed in detection_seeds(workflow):
            base = {"seed": seed, "data": {"name": dataset, "root": root}, "model": model}
            pretrain = None
            if variant.pretrain_method:
                pretrain = run_id(dataset, backbone, variant.pretrain_method, seed)
                raw = merge(_stage(workflow, "pretrain_detection", base), {
                    "mode": "pretrain", "label": variant.pretrain_method,
                    "ssl": {"shuffle": variant.perm, "megapatch_side": side if variant.mega else 0}})
                _add(runs, problems, pretrain, dataset, raw)
            raw = merge(_stage(workflow, "detect", base), {
                "mode": "detect", "label": variant.name,
                "detection": {"ssl_joint": variant.upstream is False}})
            if pretrain:  # upstream: start from the pretrain run's best.pt
                raw["init_checkpoint"] = best_checkpoint(results, pretrain)
            _add(runs, problems, run_id(dataset, backbone, variant.method, seed), dataset, raw,
                 pretrain)
    if problems:
        raise ConfigError(sorted(set(problems)), "workflow config")
    return runs


def _data_config(data: dict, dataset: str) -> dict:
    """The `data` block of a Table 1 run: its dataset, and the resized copy when `data.resized`
    names the dataset."""
    root = data.get("root", DataConfig.root)
    side = (data.get("resized") or {}).get(dataset)
    return {"name": dataset, "root": root,
            **({"folder": str(resized_folder(root, dataset, side))} if side else {})}


def resized_problems(data: dict) -> list[str]:
    """What is wrong with the workflow config's `data.resized` ({dataset: shorter side})."""
    problems = []
    for dataset, side in (data.get("resized") or {}).items():
        spec = DATASETS.get(dataset)
        if spec is None or not spec.resizable:
            usable = ", ".join(n for n, s in DATASETS.items() if s.resizable)
            problems.append(f"data.resized.{dataset}: only image-file datasets cropped by "
                            f"RandomResizedCrop have resized copies ({usable})")
        elif not is_whole_number(side) or side < spec.image_size:
            problems.append(f"data.resized.{dataset}: the shorter side must be a whole number "
                            f"of pixels of at least the input size {spec.image_size}, got "
                            f"{side!r}")
    return problems


# run keys the planner sets, and where a workflow config chooses them instead
PLANNED_KEYS = {
    ("seed",): "seeds: `seeds`, table1.seeds, detection.seeds",
    ("mode",): "the stage: pretrain, finetune, supervised, detect",
    ("data", "name"): "datasets: table1.datasets, detection.tables",
    ("data", "root"): "the workflow config's data.root (where prepare_data puts them)",
    ("model", "backbone"): "backbones: table1.backbone, detection.tables",
    ("label",): "the table column of each method and row",
    ("init_checkpoint",): "the pretrain run's best.pt, for finetune and upstream detect runs",
}


def _unplanned(keys: Iterable[str], planned: list[str], path: str, what: str) -> list[str]:
    """A problem for each of `keys` (a mistyped dataset or backbone) that is not planned: the
    setting would be ignored without a word."""
    return [f"{path}.{key}: not one of {what} ({', '.join(planned)})"
            for key in keys if key not in planned]


def _dataset_run_problems(table: dict) -> list[str]:
    """What is wrong with `table1.run` ({dataset: run keys}), `table1.seeds` and
    `table1.megapatch.datasets`: datasets not planned; run keys the planner sets itself."""
    datasets, by_dataset = table["datasets"], table.get("run") or {}
    problems = _unplanned((table.get("seeds") or {}), datasets, "table1.seeds",
                          "table1.datasets")
    problems += _unplanned((table.get("megapatch") or {}).get("datasets", []), datasets,
                           "table1.megapatch.datasets", "table1.datasets")
    problems += _unplanned(by_dataset, datasets, "table1.run", "table1.datasets")
    for name, keys in by_dataset.items():
        problems += _planner_key_problems(keys, f"table1.run.{name}")
    return problems


def _planner_key_problems(keys: Any, where: str) -> list[str]:
    """A problem for each run key in `keys` (run keys at `where`) that the planner sets itself,
    which would be overridden without a word."""
    problems = []
    for path, instead in PLANNED_KEYS.items():
        node = keys
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            problems.append(f"{where}.{'.'.join(path)}: set by the planner ({instead}), "
                            "not here")
    return problems


def _shared_run_key_problems(workflow: dict) -> list[str]:
    """Planner-set keys in the run keys shared by many runs: `run`, `stages.<stage>` and
    `detection.models.<backbone>` (a model block: its `backbone`)."""
    problems = _planner_key_problems(workflow.get("run"), "run")
    for stage, keys in (workflow.get("stages") or {}).items():
        problems += _planner_key_problems(keys, f"stages.{stage}")
    models = (workflow.get("detection") or {}).get("models") or {}
    problems += [f"detection.models.{backbone}.backbone: set by the planner (the key above it), "
                 "not here" for backbone, keys in models.items()
                 if isinstance(keys, dict) and "backbone" in keys]
    return problems


def plan_table1(workflow: dict) -> dict[str, PlannedRun]:
    """All Table 1 runs of the workflow config; every invalid run config is reported at once."""
    table = workflow["table1"]
    data = workflow.get("data", {}) or {}
    runs: dict[str, PlannedRun] = {}
    problems: list[str] = []
    backbone = table["backbone"]
    problems += resized_problems(data)
    problems += _unplanned(data.get("resized") or {}, table["datasets"], "data.resized",
                           "table1.datasets")
    by_dataset = table.get("run") or {}
    problems += _dataset_run_problems(table)
    for dataset in table["datasets"]:
        seeds = (table.get("seeds") or {}).get(dataset, workflow["seeds"])
        for seed in seeds:
            # the dataset's own run keys (`table1.run`) over `run` and `stages`, under the
            # planner's
            base = merge(by_dataset.get(dataset) or {},
                         {"seed": seed, "data": _data_config(data, dataset),
                          "model": {"backbone": backbone}})
            for method, raw in _methods(workflow, dataset, base).items():
                pretrain = run_id(dataset, backbone, PRETRAIN_OF[method], seed) \
                    if method in PRETRAIN_OF else None
                _add(runs, problems, run_id(dataset, backbone, method, seed), dataset,
                     merge(raw, {"mode": METHOD_MODES[method]}), pretrain)
    if problems:
        raise ConfigError(sorted(set(problems)), "workflow config")
    return runs


def detection_plan_rows(workflow: dict, paper_csv: str = PAPER_TABLES) -> list[dict]:
    """The rows of Tables 2-3 with the metrics file of the run that fills each (per seed)."""
    results = workflow.get("results", "results")
    seeds = detection_seeds(workflow)
    rows = []
    for row in detection_rows(workflow, paper_csv):
        for seed in seeds:
            run = run_id(row.run_dataset, row.backbone, row.variant.method, seed)
            rows.append({"table": row.table, "dataset": row.dataset, "backbone": row.backbone,
                         "run_dataset": row.run_dataset, "variant": row.variant.name,
                         "upstream": row.variant.upstream, "perm": row.variant.perm,
                         "mega": row.variant.mega, "seed": seed, "run_id": run,
                         "metrics": metrics_file(results, run)})
    return rows


def release_stale_locks(state_dir: str = ".snakemake") -> list[str]:
    """Remove Snakemake's directory locks when every snakemake that parsed this workflow here is
    gone (SIGKILLed, lost session, dead node), so a plain `snakemake` resumes; returns them.

    Each invocation records `<state_dir>/relvit-pids/<host>-<pid>` at parse time. Locks stay while
    any recorded process is alive on this host, or one of another host is recorded (it cannot be
    checked from here): then Snakemake's LockException (and `--unlock`) apply as usual.
    """
    import os
    import socket
    from pathlib import Path

    host = socket.gethostname()
    pids = Path(state_dir) / "relvit-pids"
    pids.mkdir(parents=True, exist_ok=True)
    live = False
    for record in pids.iterdir():
        name, _, pid = record.name.rpartition("-")
        if name != host or not pid.isdigit():
            live = True  # another host's snakemake, maybe alive: leave its locks alone
        elif _alive(int(pid)):
            live = live or int(pid) != os.getpid()
        else:
            record.unlink(missing_ok=True)
    (pids / f"{host}-{os.getpid()}").touch()
    locks = sorted(Path(state_dir, "locks").glob("*.lock"))
    if live or not locks:
        return []
    for lock in locks:
        lock.unlink(missing_ok=True)
    return [str(lock) for lock in locks]


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
