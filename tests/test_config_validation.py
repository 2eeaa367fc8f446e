"""Run-config values that would pass unnoticed and break or silently change training, and config
files or overrides that would crash a command: each refused with its key path or file named."""

import math

import pytest

from relvit.cli import main
from relvit.config import MODES, ConfigError, config_from_dict, load_config, parse_overrides
from relvit.data.registry import DATASETS
from relvit.models.specs import BACKBONES


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return info.value.problems


@pytest.mark.parametrize("section,key,value", [
    ("optim", "clip_grad", math.nan),  # would switch clipping off
    ("optim", "lr", math.nan),  # "Invalid learning rate: nan" once training starts
    ("optim", "lr", math.inf),
    ("optim", "min_lr", math.nan),
    ("optim", "weight_decay", -math.inf),
    ("optim", "step_gamma", math.nan),
    ("optim", "warmup_fraction", math.nan),
    ("model", "mlp_ratio", math.inf),
    ("model", "drop_rate", math.nan),
    ("model", "drop_path_rate", math.nan),
])
def test_every_float_key_must_be_finite(section, key, value):
    assert problems_of({section: {key: value}}) == [
        f"{section}.{key}: must be a finite number, got {value}"]


def test_an_int_too_large_for_a_float_is_refused():
    assert problems_of({"optim": {"lr": 10**400}}) == [
        f"optim.lr: must be a finite number, got {10**400}"]


def test_nan_and_inf_from_yaml_are_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim: {clip_grad: .nan, lr: -.inf}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["optim.clip_grad: must be a finite number, got nan",
                                   "optim.lr: must be a finite number, got -inf"]


@pytest.mark.parametrize("raw,message", [
    ({"optim": {"step_gamma": -1}}, "optim.step_gamma: must be positive, got -1.0"),
    ({"optim": {"step_gamma": 0}}, "optim.step_gamma: must be positive, got 0.0"),
    ({"optim": {"step_epochs": 0}}, "optim.step_epochs: must be positive, got 0"),
    ({"detection": {"eval_every": 0}}, "detection.eval_every: must be positive, got 0"),
    ({"model": {"mlp_ratio": -1}}, "model.mlp_ratio: must be positive, got -1.0"),
    ({"model": {"mlp_ratio": 0}}, "model.mlp_ratio: must be positive, got 0.0"),
    ({"detection": {"fpn_channels": 0}}, "detection.fpn_channels: must be positive, got 0"),
    ({"detection": {"box_representation": -4}},
     "detection.box_representation: must be positive, got -4"),
    ({"detection": {"mask_head_width": 0}}, "detection.mask_head_width: must be positive, got 0"),
    ({"detection": {"roi_batch_size": 0}}, "detection.roi_batch_size: must be positive, got 0"),
    ({"detection": {"rpn_train_proposals": 0}},
     "detection.rpn_train_proposals: must be positive, got 0"),
    ({"seed": 10**20}, "seed: must be in [0, 2**63 - 1], got 100000000000000000000"),
    ({"seed": 2**63}, "seed: must be in [0, 2**63 - 1], got 9223372036854775808"),
    ({"seed": -1}, "seed: must be in [0, 2**63 - 1], got -1"),
    ({"data": {"workers": -1}}, "data.workers: must not be negative, got -1"),
    ({"optim": {"warmup_fraction": 1.0}}, "optim.warmup_fraction: must be in [0, 1), got 1.0"),
    ({"model": {"drop_path_rate": 1.0}}, "model.drop_path_rate: must be in [0, 1), got 1.0"),
    ({"device": "cuda:0x"}, "device: 'cuda:0x' is not auto, cpu, cuda or cuda:N"),
])
def test_numeric_ranges(raw, message):
    assert problems_of(raw) == [message]


@pytest.mark.parametrize("raw,message", [
    ({"mode": "joint", "ssl": {"megapatch_side": 2}},
     "ssl.shuffle / ssl.megapatch_side: only used by mode 'pretrain' (joint training uses "
     "identity targets, method spec §3)"),
    # the geometry's own message names its key: no "data.image_size / ..." prefix before it
    ({"mode": "pretrain", "ssl": {"megapatch_side": 5}},
     "ssl.megapatch_side: 5 is larger than the base grid side 4"),
    # a detection run with SSL joint training needs the 2x2 grid too
    ({"mode": "detect", "data": {"name": "digit_scenes"}, "detection": {"ssl_joint": True},
      "model": {"patch_size": 64}},
     "data.image_size / model.patch_size: the SSL grid would be 1x1 (ViT-S's tokens of 64 px on "
     "64-px images): the SSL tasks need at least 2x2 cells"),
    ({"model": {"backbone": "t2t_vit_14", "embed_dim": 40, "num_heads": 3}},
     "model.embed_dim: 40 is not divisible by model.num_heads 3"),
])
def test_semantic_problems_are_named_whole(raw, message):
    """tests/test_config.py's test_semantic_problems matches a part of each message; these
    whole, with the key they start with."""
    assert problems_of(raw) == [message]


@pytest.mark.parametrize("raw", [
    {"mode": "pretrain", "model": {"embed_dim": 9, "num_heads": 1}},  # one channel per relation
    {"mode": "pretrain", "data": {"image_size": 16}, "model": {"patch_size": 8}},  # a 2x2 grid
])
def test_the_smallest_usable_ssl_settings_pass(raw):
    assert config_from_dict(raw)


def test_the_largest_seed_is_accepted_and_the_next_refused():
    assert config_from_dict({"seed": 2**63 - 1}).seed == 2**63 - 1
    assert problems_of({"seed": 2**63}) == [
        "seed: must be in [0, 2**63 - 1], got 9223372036854775808"]


@pytest.mark.parametrize("mode", ["pretrain", "supervised", "joint"])
def test_only_finetune_and_detect_start_from_a_checkpoint(mode):
    """`relvit supervised --init best.pt` loaded the backbone silently: the supervised baseline
    became a finetune."""
    assert problems_of({"mode": mode, "init_checkpoint": "runs/pre/best.pt"}) == [
        f"init_checkpoint: mode {mode!r} trains from scratch; only finetune and detect start "
        "from a pretrain run's weights (--init)"]
    assert config_from_dict({"mode": "finetune", "init_checkpoint": "a.pt"}).init_checkpoint
    assert config_from_dict({"mode": "detect", "data": {"name": "digit_scenes"},
                             "init_checkpoint": "a.pt"}).init_checkpoint


def test_min_lr_must_not_exceed_lr_where_the_schedule_decays_to_it():
    """"relvit" and "cosine" decay from lr to min_lr (a min_lr above lr would raise the LR over
    training); "step" never reads min_lr."""
    for schedule in ("relvit", "cosine"):
        assert problems_of({"optim": {"schedule": schedule, "lr": 1e-3, "min_lr": 5e-2}}) == [
            f"optim.min_lr: must not exceed optim.lr 0.001 (schedule {schedule!r} decays from "
            "lr to min_lr), got 0.05"]
        assert config_from_dict({"optim": {"schedule": schedule, "lr": 1e-3, "min_lr": 1e-3}})
    assert config_from_dict({"optim": {"schedule": "step", "lr": 1e-3, "min_lr": 5e-2}})


def test_range_problems_come_with_the_type_problems():
    """One round: the ranges of the well-typed keys are checked with the type errors; an
    ill-typed key is not range-checked, and no cross-key check runs on its stand-in."""
    assert problems_of({"seed": "one", "optim": {"lr": "fast", "min_lr": 1e-2, "epochs": 0,
                                                 "step_gamma": -1},
                        "detection": {"eval_every": 0}}) == [
        "seed: expected int, got str 'one'",
        "optim.lr: expected float, got str 'fast'",
        "optim.epochs: must be positive, got 0",
        "optim.step_gamma: must be positive, got -1.0",
        "detection.eval_every: must be positive, got 0",
    ]



def test_unknown_names_come_with_the_type_problems():
    """An unknown dataset or backbone had waited for a second round, after the type errors."""
    assert problems_of({"data": {"name": "cifar11", "workers": "many"},
                        "model": {"backbone": "vit_huge"}}) == [
        "data.workers: expected int, got str 'many'",
        "data.name: unknown dataset 'cifar11'; known: " + ", ".join(DATASETS),
        "model.backbone: unknown backbone 'vit_huge'; known: " + ", ".join(BACKBONES),
    ]


BAD_FILES = {
    # on one line, where (`relvit check` printed PyYAML's several lines)
    "invalid YAML": (b"optim: {lr: [1\n", "not valid YAML (while parsing a flow sequence: "
                     "expected ',' or ']', but got '<stream end>' at line 2, column 1)"),
    "a top-level list": (b"- optim\n- model\n", "expected a mapping of config keys, got list"),
    "a top-level string": (b"just words\n", "expected a mapping of config keys, got str"),
    "not UTF-8": (b"label: caf\xe9\n", "not UTF-8 text"),
    # the unknown dataset keeps a run from starting where the duplicate goes unnoticed
    "duplicate keys": (b"data: {name: nowhere}\noptim: {lr: 1.0e-3, lr: 5.0e-2}\n",
                       "not valid YAML (duplicate key 'lr' at line 2, column 21; first at line 2, "
                       "column 9)"),
}


@pytest.mark.parametrize("command", [*MODES, "check"])
@pytest.mark.parametrize("kind", BAD_FILES)
def test_every_command_names_a_bad_config_file(tmp_path, capsys, command, kind):
    content, message = BAD_FILES[kind]
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    out = tmp_path / "out"
    args = ["--config", str(path)] + (["--out", str(out)] if command != "check" else [])
    assert main([command, *args]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {message}" in err, err
    assert "Traceback" not in err and not out.exists()


def test_duplicate_keys_are_refused_at_any_depth_but_merge_keys_may_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 1\nlabel: a\nseed: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: not valid YAML (duplicate key 'seed' at line 3, column 1; first at line 1, "
        "column 1)"]
    path.write_text("optim:\n  <<: {lr: 1.0e-3, epochs: 2}\n  lr: 2.0e-3\n")
    assert load_config(path).optim.lr == 2e-3  # a merge's key overridden: YAML's own rule
    path.write_text("optim:\n  <<: {lr: 1.0e-3, epochs: 2}\n  lr: 2.0e-3\n  lr: 3.0e-3\n")
    with pytest.raises(ConfigError, match="duplicate key 'lr' at line 4"):
        load_config(path)


@pytest.mark.parametrize("items,message", [
    (["optim.lr=[1"], "optim.lr=[1: not a valid YAML value (while parsing a flow sequence: "
                      "expected ',' or ']', but got '<stream end>' at line 1, column 3)"),
    (["optim=3", "optim.lr=1"], "optim.lr=1: an earlier override sets optim to 3, not a mapping"),
    (["model={depth: 2}", "model.depth.x=1"],
     "model.depth.x=1: an earlier override sets model.depth to 2, not a mapping"),
    (["optim={lr: 1, lr: 2}"], "optim={lr: 1, lr: 2}: not a valid YAML value (duplicate key "
                               "'lr' at line 1, column 9; first at line 1, column 2)"),
])
def test_bad_overrides_are_named(items, message):
    with pytest.raises(ConfigError) as info:
        parse_overrides(items)
    assert info.value.problems == [message]


@pytest.mark.parametrize("command", ["supervised", "check"])
def test_commands_report_bad_overrides_cleanly(tmp_path, capsys, command):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 0\n")
    out = tmp_path / "out"
    args = ["--config", str(path)] + (["--out", str(out)] if command != "check" else [])
    for sets, message in [(["optim.lr=[1"], "optim.lr=[1: not a valid YAML value"),
                          (["optim=3", "optim.lr=1"], "optim.lr=1: an earlier override sets")]:
        assert main([command, *args, *[a for s in sets for a in ("--set", s)]]) == 2
        err = capsys.readouterr().err
        assert "relvit: error: invalid override:" in err and message in err, err
    assert not out.exists()


def test_init_and_device_options_are_taken_as_given(tmp_path):
    """--init and --device went through the YAML parser: "runs/a #1/best.pt" became "runs/a"
    (the rest a comment), a checkpoint named "yes" the bool True."""
    import argparse

    from relvit.cli import _load_run_config

    config = tmp_path / "run.yaml"
    config.write_text("optim: {epochs: 1}\n")
    for init in (str(tmp_path / "runs" / "a #1" / "best.pt"), "yes", "1e3"):
        args = argparse.Namespace(config=config, set=[], init=init, device="cpu")
        cfg = _load_run_config(args, "finetune")
        assert (cfg.init_checkpoint, cfg.device, cfg.mode) == (init, "cpu", "finetune")


@pytest.mark.parametrize("args, said", [
    (["supervised", "--config", "c.yaml", "--out", "o", "--threads", "-2"],
     "argument --threads: expected a whole number of at least 1, got '-2'"),
    (["resize-images", "a", "b", "--shorter-side", "4", "--workers", "-3"],
     "argument --workers: expected a whole number of at least 0, got '-3'"),
])
def test_counts_below_their_minimum_are_usage_errors(capsys, args, said):
    """--threads -2 had ended in torch's RuntimeError traceback; --workers -3 in the process
    pool's "max_workers must be greater than 0", naming no option."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("args", [
    ["supervised", "--config", "c.yaml", "--out", "{file}"],
    ["resize-images", "a", "{file}", "--shorter-side", "4"],
    ["prepare-data", "digits", "--root", "{file}"],
    ["report-detection", "--plan", "p.json", "--out", "{file}"],
])
def test_a_file_where_a_folder_is_written_is_a_usage_error(tmp_path, capsys, args):
    """A file given as the run folder had said "[Errno 17] File exists", after a complaint about
    its train.log."""
    file = tmp_path / "afile"
    file.write_text("kept")
    with pytest.raises(SystemExit) as exit_:
        main([arg.format(file=file) for arg in args])
    assert exit_.value.code == 2 and f"{file}: a file, not a folder" in capsys.readouterr().err
    assert file.read_text() == "kept"
