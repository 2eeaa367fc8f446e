"""Bad input: every problem named, with its key path, before anything trains."""

import subprocess
import sys

import pytest

from relvit.cli import main
from relvit.config import ConfigError, config_from_dict, load_config, parse_overrides


def problems_of(raw):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return info.value.problems


def test_all_type_problems_are_reported_at_once():
    problems = problems_of({"mode": "pretrian", "seed": "one",
                            "optim": {"lr": "fast", "epochz": 3}, "model": {"depth": True}})
    assert problems == [
        "mode: 'pretrian' is not one of 'pretrain', 'finetune', 'supervised', 'joint', 'detect'",
        "seed: expected int, got str 'one'",
        "optim.lr: expected float, got str 'fast'",
        "optim.epochz: unknown key (did you mean 'epochs'?); allowed: epochs, batch_size, lr, "
        "min_lr, weight_decay, decay_norm_and_bias, warmup_fraction, schedule, step_epochs, "
        "step_gamma, clip_grad",
        "model.depth: expected int, got bool True",
    ]


def test_unknown_dataset_and_backbone():
    problems = problems_of({"data": {"name": "cifar"}, "model": {"backbone": "resnet"}})
    assert problems == [
        "data.name: unknown dataset 'cifar'; known: digits, cifar10, svhn, cifar100, flowers102, "
        "tiny_imagenet, imagenet100, imagenet, digit_scenes, voc2007, coco2017, kitti, "
        "svhn_detection, imagefolder",
        "model.backbone: unknown backbone 'resnet'; known: vit_tiny, vit_small, vit_base, "
        "swin_tiny, t2t_vit_14",
    ]


@pytest.mark.parametrize("raw,message", [
    ({"model": {"patch_size": 5}}, "token stride of 5 px, which does not divide the image size 16"),
    ({"model": {"backbone": "t2t_vit_14"}, "data": {"image_size": 40}},
     "token stride of 16 px, which does not divide the image size 40"),
    ({"model": {"backbone": "t2t_vit_14"}, "data": {"image_size": 112}},
     "7x7 tokens of 16 px pool to a 4x4 SSL grid whose 28-px cells cut across its tokens: "
     "choose an image size (data.image_size) that is a multiple of 32"),  # pool x stride
    ({"mode": "pretrain", "ssl": {"megapatch_side": 5}}, "megapatch_side: 5 is larger than"),
    ({"model": {"embed_dim": 40, "num_heads": 3}}, "40 is not divisible by model.num_heads 3"),
    ({"mode": "pretrain", "model": {"embed_dim": 6, "num_heads": 3}}, "too narrow"),
    ({"optim": {"warmup_fraction": 1.5}}, "warmup_fraction: must be in [0, 1)"),
    ({"optim": {"epochs": 0}}, "optim.epochs: must be positive"),
    ({"device": "tpu"}, "device: 'tpu' is not auto, cpu, cuda or cuda:N"),
    ({"device": "cuda:x"}, "device: 'cuda:x' is not auto, cpu, cuda or cuda:N"),  # torch's
    ({"device": "cuda:-1"}, "device: 'cuda:-1' is not auto, cpu, cuda or cuda:N"),  # traceback
    ({"compile_mode": "reduce-overhead"}, "compile_mode: 'reduce-overhead' needs compile: true"),
    ({"compile": True, "compile_mode": "graphs"}, "compile_mode: 'graphs' is not one of 'default'"),
    ({"compile_step": True}, "compile_step: needs compile: true"),
    ({"precision": "fp16"}, "precision: 'fp16' is not one of 'bf16', 'fp32'"),
    ({"mode": "detect", "data": {"name": "digit_scenes"}, "compile": True,
      "compile_step": True}, "compile_step: not for mode 'detect'"),
    ({"mode": "joint", "ssl": {"shuffle": True}}, "only used by mode 'pretrain'"),
    ({"mode": "pretrain", "ssl": {"relations": False, "positions": False}}, "at least one SSL"),
])
def test_semantic_problems(raw, message):
    """Each problem is named with its key, and with its remedy where one exists (T2T's cells
    that cut across its tokens had named a wrong image multiple without a test noticing)."""
    assert any(message in p for p in problems_of(raw)), problems_of(raw)


def test_numbers_in_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim: {lr: 5e-4, epochs: 3}\n")
    cfg = load_config(path, ["optim.batch_size=32", "model.pos_embed=true"])
    assert cfg.optim.lr == 5e-4 and cfg.optim.batch_size == 32 and cfg.pos_embed
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_cli_reports_config_errors_before_training(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("data: {name: imagenet21k}\nmodel: {patch_size: 3}\n")
    assert main(["supervised", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "data.name: unknown dataset 'imagenet21k'" in err
    assert not (tmp_path / "out").exists()
    assert main(["check", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: file not found" in capsys.readouterr().err


def test_cli_refuses_a_mode_that_contradicts_the_config(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("mode: pretrain\n")
    assert main(["finetune", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "says 'pretrain' but the command is 'finetune'" in capsys.readouterr().err


def test_cli_check_checks_a_config_for_a_mode(tmp_path, capsys):
    """A detection run config (no mode key, as `relvit detect` reads it) checks with --mode."""
    path = tmp_path / "det.yaml"
    path.write_text("data: {name: digit_scenes}\n")
    assert main(["check", "--config", str(path)]) == 2
    assert ("'digit_scenes' is a detection dataset (mode: detect, or relvit check --mode "
            "detect)") in capsys.readouterr().err
    assert main(["check", "--config", str(path), "--mode", "detect"]) == 0
    out = capsys.readouterr().out
    assert "mode: detect" in out and "model:\n  backbone: vit_small\n  patch_size: null" in out
    assert out.endswith("# derived (dataset registry, backbone preset, mode): backbone "
                        "ViT-S/8, positional embeddings on\n")  # the registry's patch
    assert main(["check", "--config", str(path), "--mode", "pretrain"]) == 0
    assert capsys.readouterr().out.endswith(
        "backbone ViT-S/8, positional embeddings off, image_size 64, SSL grid 8x8 (64 "
        "positions)\n")
    path.write_text("mode: pretrain\ndata: {name: digit_scenes}\n")
    assert main(["check", "--config", str(path), "--mode", "detect"]) == 2
    assert "says 'pretrain' but the command is 'detect'" in capsys.readouterr().err


def test_cli_check_refuses_what_the_mode_refuses_at_its_start(tmp_path, capsys, caplog):
    """`check --mode finetune` had passed a config without init_checkpoint (or with an empty
    one), which `relvit finetune` refuses; a checkpoint that is not there (yet) is said."""
    path = tmp_path / "run.yaml"
    for init in ("", 'init_checkpoint: ""\n'):
        path.write_text(init + "model: {embed_dim: 36, depth: 1, num_heads: 3}\n")
        assert main(["check", "--config", str(path), "--mode", "finetune"]) == 2
        assert "mode 'finetune' needs init_checkpoint (or --init PATH)" in capsys.readouterr().err
    absent = tmp_path / "pre" / "best.pt"
    with caplog.at_level("WARNING", logger="relvit"):
        assert main(["check", "--config", str(path), "--mode", "finetune", "--set",
                     f"init_checkpoint={absent}"]) == 0
    assert f"init_checkpoint: {absent} is not a file (yet)" in caplog.text
    # the --init the error names, as `relvit finetune --init` takes it (check had none)
    assert main(["check", "--config", str(path), "--mode", "finetune", "--init", str(absent),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"init_checkpoint: {absent}" in out and "device: cpu" in out


def test_cli_check_shows_the_mega_patch_grid(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("mode: pretrain\nssl: {megapatch_side: 2}\n")
    assert main(["check", "--config", str(path)]) == 0
    assert capsys.readouterr().out.endswith(
        "backbone ViT-S/4, positional embeddings off, image_size 16, SSL grid 2x2 (4 positions)\n")


def _fake_train(monkeypatch, error=None) -> list:
    """relvit.train.loop.train replaced: the calls `relvit MODE` makes (config, folder and
    keywords), recorded; `error` raised from each."""
    import relvit.train.loop as loop

    calls = []

    def train(cfg, out, **kwargs):
        calls.append((cfg, out, kwargs))
        if error is not None:
            raise error

    monkeypatch.setattr(loop, "train", train)
    return calls


def _pretrain_argv(tmp_path) -> list[str]:
    config = tmp_path / "run.yaml"
    config.write_text("optim: {epochs: 1}\n")
    return ["pretrain", "--config", str(config), "--out", str(tmp_path / "run")]


def test_cli_training_flags_reach_the_training_loop(tmp_path, monkeypatch):
    """--threads, --no-progress, --replace-changed and --device (only slow end-to-end tests had
    passed them)."""
    import torch

    calls, threads = _fake_train(monkeypatch), []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    argv = _pretrain_argv(tmp_path)
    assert main([*argv, "--threads", "3", "--no-progress", "--replace-changed", "--device",
                 "cpu"]) == 0
    (cfg, out, kwargs), = calls
    assert (cfg.mode, cfg.device, out, kwargs) == (
        "pretrain", "cpu", tmp_path / "run", {"progress": False, "replace_changed": True})
    assert threads == [3]
    calls.clear()
    assert main(argv) == 0
    assert calls[0][2] == {"progress": None, "replace_changed": False}


def test_cli_records_a_non_finite_loss_only_with_record_failure(tmp_path, monkeypatch, capsys):
    import relvit.train.failure as failure
    from relvit.train.errors import NonFiniteLossError

    _fake_train(monkeypatch, NonFiniteLossError("loss is nan", epoch=1, step=2))
    recorded = []
    monkeypatch.setattr(failure, "record_failure", lambda cfg, out, err: recorded.append(out))
    argv = _pretrain_argv(tmp_path)
    assert main(argv) == 1 and recorded == []
    assert "relvit: error: loss is nan" in capsys.readouterr().err
    assert main([*argv, "--record-failure"]) == 0 and recorded == [tmp_path / "run"]


def test_cli_exits_143_on_sigterm_and_130_on_ctrl_c_saying_what_is_kept(tmp_path, monkeypatch,
                                                                       capsys):
    """The fast twin of tests/faults/test_kill_resume.py's signals to a real run."""
    from relvit.interrupts import Terminated

    argv = _pretrain_argv(tmp_path)
    _fake_train(monkeypatch, Terminated("signal SIGTERM"))
    assert main(argv) == 143
    assert capsys.readouterr().err.strip().endswith(
        f"relvit: terminated (SIGTERM); {tmp_path / 'run'} has no finished epoch yet: the same "
        "command starts the run again")
    _fake_train(monkeypatch, KeyboardInterrupt())
    assert main(argv) == 130
    assert "relvit: interrupted; " in capsys.readouterr().err


def test_a_problem_with_a_key_the_command_line_gave_says_so(tmp_path, capsys):
    """Errors of a --set or --init value had read as the config file's."""
    path = tmp_path / "run.yaml"
    path.write_text("optim: {epochs: 2}\n")
    assert main(["check", "--config", str(path), "--set", "optim.epoch=1"]) == 2
    err = capsys.readouterr().err
    assert f"invalid {path}:" in err and "optim.epoch: unknown key" in err
    assert err.rstrip().endswith("(from --set optim.epoch=1)")
    assert main(["pretrain", "--config", str(path), "--out", str(tmp_path / "o"), "--init",
                 str(tmp_path / "x.pt")]) == 2
    assert "trains from scratch" in (err := capsys.readouterr().err) and err.rstrip().endswith(
        "(from the command line)")
    path.write_text("optim: {epoch: 2}\n")  # the file's own typo: no origin added
    assert main(["check", "--config", str(path), "--set", "optim.lr=0.1"]) == 2
    assert "(from" not in capsys.readouterr().err


def test_cli_finetune_without_checkpoint_fails_clearly(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {embed_dim: 36, depth: 1, num_heads: 3}\n")
    result = subprocess.run(
        [sys.executable, "-m", "relvit.cli", "finetune", "--config", str(path),
         "--out", str(tmp_path / "o"), "--init", str(tmp_path / "absent.pt")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert f"init_checkpoint: checkpoint {tmp_path / 'absent.pt'} does not exist" in result.stderr


def test_the_command_line_starts_without_the_heavy_libraries():
    """`relvit --help`, `relvit check` and each job's argument parsing import none of torch,
    pandas or scikit-learn (0.06 s against 0.35 s with pandas for compare's defaults); a command
    imports what it needs when it runs."""
    heavy = ("torch", "timm", "torchvision", "pandas", "matplotlib", "sklearn")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from relvit.cli import build_parser; "
         f"build_parser(); print(sorted(set({heavy!r}) & set(sys.modules)))"],
        capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_precision_is_cuda_autocast_or_float32():
    """bf16 autocast on CUDA by default; `precision: fp32` trains as the original (spec §5.1);
    the CPU never autocasts."""
    bf16, fp32 = config_from_dict({}), config_from_dict({"precision": "fp32"})
    assert bf16.autocast_on("cuda") and not bf16.autocast_on("cpu")
    assert not fp32.autocast_on("cuda") and not fp32.autocast_on("cpu")


# The method's decided quirks (docs/deviations.md) and the paper's hyper-parameters (method spec
# §5.1) are these keys' defaults: the tiers leave most of them out (config/paper.yaml: min_lr), so
# a changed default would change their runs without a config saying so.
DECIDED_DEFAULTS = {
    "ssl.shuffle": False,  # Q4: the scripts never shuffle
    "model.pos_embed": None,  # Q4: off for pretrain, on for every other mode
    "ssl.jitter_after_normalize": False,  # Q5: jitter on [0, 1] images, then normalise
    "ssl.megapatch_symmetric": False,  # Q7: independent row and column cuts
    "optim.schedule": "relvit",  # Q8: the original's quarter-cosine
    "optim.decay_norm_and_bias": True,  # Q9: decay on every parameter, as the original
    "ssl.relation_diagonal": True,  # Q12: the diagonal in the relation loss (faithful)
    "optim.epochs": 100, "optim.batch_size": 256, "optim.lr": 5e-4, "optim.min_lr": 1.25e-6,
    "optim.weight_decay": 0.1, "optim.warmup_fraction": 0.1, "optim.clip_grad": 1.0,
    "model.drop_path_rate": 0.1, "model.drop_rate": 0.0,
}


@pytest.mark.parametrize("key, decided", DECIDED_DEFAULTS.items())
def test_the_defaults_are_the_documented_decisions(key, decided):
    section, name = key.split(".")
    assert config_from_dict({}).to_dict()[section][name] == decided
