"""Run configuration: typed dataclasses, loaded from YAML and validated with every error at once.

A run config is everything one `relvit <mode>` call needs. Keys are checked for unknown names
(with a suggestion), types and allowed values; all problems are reported together, each with its
key path, before anything is built or trained.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

Mode = Literal["pretrain", "finetune", "supervised", "joint", "detect"]
# torch.compile's modes ("reduce-overhead": CUDA graphs)
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
# on CUDA: bf16 autocast, or float32 throughout as the original (method spec §5.1)
Precision = Literal["bf16", "fp32"]
MODES: tuple[str, ...] = get_args(Mode)


class ConfigError(ValueError):
    """A configuration problem; `problems` lists every "key.path: message" found."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems, self.source = problems, source
        super().__init__(f"invalid {source}:\n  " + "\n  ".join(problems))


@dataclass
class DataConfig:
    """Which dataset, at which size; `None` means the dataset registry's default."""

    name: str = "digits"
    image_size: int | None = None  # the ViT patch stays the dataset's: set model.patch_size too
    root: str = "data"  # datasets live in <root>/<name>, as `relvit prepare-data` puts them
    folder: str | None = None  # this dataset's folder instead (e.g. your own imagefolder)
    workers: int = 4  # DataLoader workers decoding image files (array datasets need none)
    augment: bool = True  # training augmentation (crops, flips; detection: IoU crop, flip)


@dataclass
class ModelConfig:
    """Backbone and its size; `None` means the backbone preset's value."""

    backbone: str = "vit_small"
    patch_size: int | None = None  # ViT / Swin patch; default from the dataset registry (ViT)
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    window_size: int | None = None  # Swin only
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    pos_embed: bool | None = None  # ViT positional embeddings; None: off for pretrain, else on


@dataclass
class SSLConfig:
    """The self-supervised tasks and their input construction (method spec §1-2)."""

    relations: bool = True  # the relation task (§1.2); false switches it off
    positions: bool = True  # the absolute-position task (§1.3)
    distances: bool = False  # the scripts' unused distance and angle tasks (§1.4-1.5, Q14)
    angles: bool = False
    relation_diagonal: bool = True  # include the N trivial CC entries in the loss (faithful)
    jitter: bool = True  # per-patch jitter on the pretraining split (§2.1)
    jitter_after_normalize: bool = False  # the original's order, which clamps negatives (Q5)
    shuffle: bool = False  # random patch permutation per sample (§2.2, off as in the scripts)
    megapatch_side: int = 0  # S > 0 turns mega-patches on (§2.3)
    megapatch_symmetric: bool = False  # the original's row cuts reused for columns (Q7)


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (method spec §5.1)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 5e-4
    min_lr: float = 1.25e-6
    weight_decay: float = 0.1
    decay_norm_and_bias: bool = True  # the original decays every parameter (Q9)
    warmup_fraction: float = 0.1  # linear warm-up from 0 over this share of the steps
    schedule: Literal["relvit", "cosine", "step"] = "relvit"
    step_epochs: int = 30  # schedule "step": LR x step_gamma every step_epochs (detection, §6.5)
    step_gamma: float = 0.1
    clip_grad: float = 1.0  # global norm; 0 disables


@dataclass
class DetectionConfig:
    """Detection runs (mode detect, method spec §6): the R-CNN and its training."""

    masks: bool | None = None  # Mask R-CNN; None: where the dataset has masks
    ssl_joint: bool = False  # RelViT "upstream ✗": SSL losses trained with the detector
    fpn_channels: int = 256
    box_representation: int = 1024  # R-CNN head sizes and sampling: torchvision's defaults,
    mask_head_width: int = 256  # smaller in the smoke tier
    roi_batch_size: int = 512
    rpn_train_proposals: int = 2000  # per image; in testing half as many (HeadSizes)
    iou_crop: bool = False  # the original's "ssdlite" RandomIoUCrop (Q22)
    # False: every image stretched to image_size x image_size, as the original (Q23); True: its
    # longer side resized to image_size, aspect kept, on an image_size x image_size canvas
    keep_aspect: bool = False
    eval_every: int = 1  # epochs between COCO evaluations (the last epoch always)


# Keys that say how a run executes, not what it computes: a run resumes across them, and they are
# left out of its config hash (relvit.train.provenance). Image files' augmentation is seeded per
# image, so the number of loader workers does not change a run's numbers (docs/deviations.md);
# the datasets' folder (data.root) may move: their files are checked against their checksums.
EXECUTION_KEYS = ("device", "compile", "compile_mode", "compile_step", "precision",
                  "data.workers", "data.root")

# Left out of the config hash (relvit.train.provenance): the execution keys say how a run ran,
# not what it computed, and the workflow passes a finetune's init_checkpoint on the command line
# (`--init`), so it is not in results/configs/<run>.yaml; metrics.json records all of them.
HASH_EXCLUDES = (*EXECUTION_KEYS, "init_checkpoint")


def execution_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The EXECUTION_KEYS of a run config's dict (`RunConfig.to_dict()`), by dotted key."""
    out = {}
    for key in EXECUTION_KEYS:
        value: Any = config
        for part in key.split("."):
            value = value[part]
        out[key] = value
    return out


def nested(settings: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys as config sections: {"data.workers": 4} -> {"data": {"workers": 4}}."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        *sections, leaf = key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return out


def read_settings_file(path: str | Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The settings a file of dotted keys holds (the workflow's <results>/execution/*.yaml:
    how a job runs, read when it starts, so that Snakemake reruns nothing when they change);
    ConfigError naming the file and every key that is not one of `keys`."""
    if not Path(path).exists():
        raise ConfigError([f"{path}: file not found (the workflow's execution files are written "
                           f"by the snakemake that runs their jobs, as it starts them)"],
                          "settings file")
    raw = read_config_file(path)
    unknown = [key for key in raw if key not in keys]
    if unknown:
        raise ConfigError([f"{path}: {key!r} is not one of {', '.join(keys)}" for key in unknown],
                          "settings file")
    return raw


def read_execution_file(path: str | Path) -> dict[str, Any]:
    """A run's execution keys from an execution file, as config sections, checked on their
    own so that a bad value is reported under the file's name."""
    settings = nested(read_settings_file(path, EXECUTION_KEYS))
    config_from_dict(settings, source=str(path))
    return settings


def without_keys(config: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A copy of a run config's dict (`RunConfig.to_dict()`) without `keys`, dotted paths
    ("data.workers") into its sections."""
    out = dict(config)
    for key in keys:
        *sections, leaf = key.split(".")
        node = out
        for section in sections:
            if not isinstance(node.get(section), dict):
                break
            node[section] = node = dict(node[section])
        else:
            node.pop(leaf, None)
    return out


@dataclass
class RunConfig:
    """One training run."""

    mode: Mode = "supervised"
    seed: int = 0
    # free-form tag the report uses, e.g. "same-epochs" for the longer baseline (the workflow
    # sets it: Table 1's columns)
    label: str = ""
    init_checkpoint: str | None = None  # finetune: the pretrain run's best.pt
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # CUDA: torch.compile the model, the dense jitter and the fused relation loss's chunks
    compile: bool = False  # (docs/performance.md)
    compile_mode: CompileMode = "default"  # the model's torch.compile mode, with compile: true
    # with compile: true, the training step from its random draws to its loss (the batch's
    # jitter, permutation and normalisation, the model, the targets and losses) compiled as one
    # region, so that compile_mode's CUDA graphs cover all of it; evaluation's step likewise
    compile_step: bool = False
    precision: Precision = "bf16"  # CUDA's autocast; the CPU always computes in float32
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def autocast_on(self, device_type: str) -> bool:
        """Whether training and evaluation run under bf16 autocast on this kind of device."""
        return device_type == "cuda" and self.precision == "bf16"

    @property
    def uses_ssl(self) -> bool:
        return self.mode in ("pretrain", "joint")

    @property
    def uses_classifier(self) -> bool:
        return self.mode not in ("pretrain", "detect")

    @property
    def pos_embed(self) -> bool:
        """Positional embeddings: off for pretrain (as the upstream scripts), on otherwise."""
        if self.model.pos_embed is None:
            return self.mode != "pretrain"
        return self.model.pos_embed


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


# what _check_value returns for a value it reported: the key keeps its default, so that the
# other keys' ranges can be checked in the same round (relvit.validate.range_problems)
_INVALID = object()


def _check_value(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Check `value` against annotation `tp`; return the (possibly coerced) value, or
    `_INVALID` after appending the problem."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _check_value(value, inner[0], path, problems)
    if origin is Literal:
        if value not in get_args(tp):
            problems.append(f"{path}: {value!r} is not {_type_name(tp)}")
            return _INVALID
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            value = float(value)  # YAML reads 5e-4 as a string
        except OverflowError:  # an int beyond float's range
            problems.append(f"{path}: must be a finite number, got {value}")
            return _INVALID
        except ValueError:
            pass
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{path}: must be a finite number, got {value}")  # .nan, .inf
        return _INVALID
    ok = is_whole_number(value) if tp is int else isinstance(value, tp)
    if not ok:
        problems.append(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return _INVALID
    return value


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{prefix or '<top>'}: expected a mapping, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{path}: unknown key{hint}; allowed: {', '.join(names)}")
            continue
        value = _check_value(value, hints[key], path, problems)
        if value is not _INVALID:
            kwargs[key] = value
    return cls(**kwargs)  # every field has a default


def is_whole_number(value: Any) -> bool:
    """An int, and not a bool (Python counts True as 1; YAML's `true` is no seed or size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge: values of `override` win, nested mappings merge."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last
    silently); keys a merge (`<<: *anchor`) brings in may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
                if seen is not key_node.start_mark:
                    mark = key_node.start_mark
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} at line {mark.line + 1}, column "
                        f"{mark.column + 1}; first at line {seen.line + 1}, column "
                        f"{seen.column + 1}")
        return super().construct_mapping(node, deep=deep)


def _yaml_message(err: yaml.YAMLError) -> str:
    """A YAML error on one line, with its position: "expected ... at line 2, column 5"."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f"{err.context}: " if err.context else ""
        return f"{context}{err.problem}{where}"
    return " ".join(str(err).split())


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load`, refusing duplicate keys (UniqueKeyLoader); raises yaml.YAMLError."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)


def parse_overrides(items: list[str]) -> dict:
    """`["optim.lr=1e-3", "model.depth=4"]` -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError([f"{item}: overrides look like key.path=value"], "override")
        key, text = item.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                section = ".".join(parents[:i + 1])
                raise ConfigError([f"{item}: an earlier override sets {section} to {node!r}, "
                                   f"not a mapping"], "override")
        try:
            node[leaf] = parse_yaml(text)
        except yaml.YAMLError as err:
            raise ConfigError([f"{item}: not a valid YAML value ({_yaml_message(err)})"],
                              "override") from None
    return out


def config_from_dict(raw: dict, source: str = "config") -> RunConfig:
    """Build and validate a RunConfig; raises ConfigError listing every problem."""
    problems: list[str] = []
    cfg = _build(RunConfig, raw, "", problems)
    from relvit.validate import name_problems, range_problems, semantic_problems  # registries

    if problems:  # the keys reported hold their defaults: the others' names and ranges too
        raise ConfigError(problems + name_problems(cfg) + range_problems(cfg), source)
    problems = semantic_problems(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def read_config_file(path: str | Path, kind: str = "config") -> dict:
    """The mapping a YAML config file holds ({} for an empty file); ConfigError (an invalid
    `kind`) naming the file when it is missing, unreadable, not UTF-8, not valid YAML
    (duplicate keys included) or not a mapping."""
    path = Path(path)
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"], kind) from None
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: not UTF-8 text (byte offset {err.start}: {err.reason})"],
                          kind) from None
    except OSError as err:
        raise ConfigError([f"{path}: cannot be read ({err.strerror or err})"], kind) from None
    except yaml.YAMLError as err:
        raise ConfigError([f"{path}: not valid YAML ({_yaml_message(err)})"], kind) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping of config keys, got "
                           f"{type(raw).__name__}"], kind)
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None,
                execution: str | Path | None = None) -> RunConfig:
    """Read a YAML run config, apply an execution file's keys (`read_execution_file`), then
    `key=value` overrides (values parsed as YAML), then `values` (top-level keys taken as they
    are: a path such as "runs/a #1/best.pt" stays one string) and validate."""
    raw = read_config_file(path)
    if execution is not None:
        raw = merge(raw, read_execution_file(execution))
    if overrides:
        raw = merge(raw, parse_overrides(overrides))
    try:
        return config_from_dict({**raw, **(values or {})}, source=str(path))
    except ConfigError as err:  # a key the command line gave is not the file's
        given = {item.split("=", 1)[0]: f"--set {item}" for item in overrides or []}
        given.update({key: "the command line" for key in values or {}})
        raise ConfigError([_with_origin(problem, given) for problem in err.problems],
                          err.source) from None


def _with_origin(problem: str, given: dict[str, str]) -> str:
    """A "key.path: message" problem, with "(from ...)" when the key came from `given`."""
    key = problem.split(":", 1)[0]
    return f"{problem} (from {given[key]})" if key in given else problem


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    from relvit.atomic import atomic_write_text

    atomic_write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), path)
