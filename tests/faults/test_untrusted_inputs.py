"""Untrusted and broken inputs: hostile checkpoints, corrupt images, configs full of typos,
hostile paths in shell commands, a download killed mid-transfer. (Hostile archives and checksum
mismatches: tests/test_download.py.)"""

from __future__ import annotations

import ast
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from faults_helpers import outcome, train_epochs, train_here, write_config
from fixtures.formats import write_imagefolder
from fixtures.http_server import serving

from relvit import cli
from relvit.data.download import download
from relvit.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs code: open(marker, "w") creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _hostile_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 1, "payload": _Payload(marker)}, path)
    return path


def test_the_hostile_checkpoint_really_runs_code_when_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    torch.load(_hostile_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()  # what any loader without weights_only=True would let happen


class _ShellPayload(_Payload):
    """The usual payload: os.system("touch marker"), which torch words another way when it
    refuses it (its advice to load the file unsafely had come through)."""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_shell_payload_and_foreign_files_are_named_as_such(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _ShellPayload(marker)}, evil)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    config = write_config(tmp_path / "fine.yaml", mode="finetune", optim={"epochs": 1})
    for init, said in ((evil, "not a checkpoint of plain tensors and data, so not loaded "
                              "(torch.load: Trying to load unsupported GLOBAL posix.system"),
                       (text, "not a torch checkpoint (no zip archive"),
                       (tmp_path, "is a folder, not a file")):
        assert train_here(config, tmp_path / "fine", "--init", init, mode="finetune") == 1
        err = capsys.readouterr().err
        assert f"checkpoint {init} " in err and said in err, err
        assert "weights_only" not in err and "arbitrary code" not in err
    assert not marker.exists()


def test_hostile_checkpoints_are_refused_without_running_their_code(tmp_path, capsys, caplog):
    marker = tmp_path / "pwned"
    evil = _hostile_checkpoint(tmp_path / "evil.pt", marker)
    config = write_config(tmp_path / "fine.yaml", mode="finetune", optim={"epochs": 1})
    assert train_here(config, tmp_path / "fine", "--init", evil, mode="finetune") == 1
    err = capsys.readouterr().err
    assert f"checkpoint {evil} cannot be read: not a checkpoint of plain tensors and data" in err
    assert "weights_only" not in err  # torch's advice to load it unsafely is left out
    # as the last.pt of a run directory: moved aside, the run starts over
    caplog.set_level(logging.WARNING, logger="relvit")
    run = tmp_path / "run"
    run.mkdir()
    _hostile_checkpoint(run / "last.pt", marker)
    config = write_config(tmp_path / "run.yaml", optim={"epochs": 1})
    assert train_here(config, run) == 0
    assert "starting the run over" in caplog.text and list(run.glob("last.pt.corrupt-*"))
    assert not marker.exists()


@pytest.mark.parametrize("damage,where,workers", [("truncated", "train/cat/c1.jpg", 0),
                                                  ("garbage", "val/cat/v1.jpg", 0),
                                                  ("truncated", "train/cat/c1.jpg", 2)])
def test_a_corrupt_image_fails_the_run_naming_the_file(tmp_path, capsys, damage, where, workers):
    folder = tmp_path / "images"
    write_imagefolder(folder)
    bad = folder / where
    bad.write_bytes(bad.read_bytes()[:40] if damage == "truncated" else b"GIF89a, or not")
    config = write_config(tmp_path / "run.yaml", mode="supervised", optim={"epochs": 1},
                          data={"name": "imagefolder", "folder": str(folder), "image_size": 16,
                                "workers": workers},
                          model={"patch_size": 4})
    assert train_here(config, tmp_path / "run", mode="supervised") == 1
    error = capsys.readouterr().err
    assert f"relvit: error: {bad}: not a readable image (" in error, error[-3000:]


@pytest.mark.parametrize("epochs_before", [0, 1])
def test_a_damaged_evaluation_image_keeps_the_epoch_trained(tmp_path, capsys, caplog,
                                                            epochs_before):
    """A damaged image of the evaluation split, met after an epoch's training, had lost that
    epoch (on ImageNet, hours): last.pt held the epoch before. last.pt now keeps the epoch
    trained, and once the image is mended the same command evaluates it first and ends as an
    uninterrupted run. `epochs_before`: epochs finished before the image is damaged (1: the
    run's last epoch is the one kept)."""
    folder = tmp_path / "images"
    write_imagefolder(folder)
    config = write_config(tmp_path / "run.yaml", mode="supervised", optim={"epochs": 2},
                          data={"name": "imagefolder", "folder": str(folder), "image_size": 16,
                                "workers": 0},
                          model={"patch_size": 4})
    assert train_here(config, tmp_path / "reference", mode="supervised") == 0
    run, bad = tmp_path / "run", folder / "val" / "cat" / "v1.jpg"
    if epochs_before:
        train_epochs(config, run, epochs_before)
    image = bad.read_bytes()
    bad.write_bytes(image[:40])
    caplog.set_level(logging.WARNING, logger="relvit")
    assert train_here(config, run, mode="supervised") == 1
    assert f"relvit: error: {bad}: not a readable image (" in capsys.readouterr().err
    trained = epochs_before + 1
    assert f"epoch {trained}'s evaluation failed; last.pt keeps its training" in caplog.text
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == trained and len(state["history"]) == epochs_before
    assert state["unevaluated"]["row"]["epoch"] == trained
    bad.write_bytes(image)
    assert train_here(config, run, mode="supervised") == 0
    assert outcome(run) == outcome(tmp_path / "reference")


def test_every_run_config_error_is_reported_at_once(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "mode": "pretrain", "seed": "one",
        "data": {"name": "cifar11", "image_sise": 32},
        "optim": {"lr": -1.0, "schedule": "cosin", "epochs": 0},
        "ssl": {"megapatch_sides": 3}}))
    assert cli.main(["check", "--config", str(bad)]) == 2
    error = capsys.readouterr().err
    for problem in ["seed: expected int, got str 'one'",
                    "data.image_sise: unknown key (did you mean 'image_size'?); allowed: name,",
                    "optim.schedule: 'cosin' is not one of 'relvit', 'cosine', 'step'",
                    "ssl.megapatch_sides: unknown key (did you mean 'megapatch_side'?)"]:
        assert problem in error, (problem, error)
    # the registry checks follow once the types are right: again all of them together
    bad.write_text(yaml.safe_dump({"data": {"name": "cifar11"},
                                   "optim": {"lr": -1.0, "epochs": 0}}))
    assert cli.main(["check", "--config", str(bad)]) == 2
    error = capsys.readouterr().err
    for problem in ["data.name: unknown dataset 'cifar11'; known: digits,",
                    "optim.epochs: must be positive, got 0", "optim.lr: must be positive"]:
        assert problem in error, (problem, error)


def _snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    from test_workflow import snakemake

    return snakemake(*args, cwd=cwd, check=False)


def test_every_workflow_config_error_is_reported_before_any_job(tmp_path):
    from test_workflow import TINY

    config = {**TINY, "seeds": [0, 0], "threads_per_run": 0, "tabel1": {},
              "gpus_per_run": "one",
              "run": {**TINY["run"], "optim": {"batch_size": 256, "lrr": 1e-3,
                                               "schedule": "cosin"}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = _snakemake("-n", "--cores", "1", "--configfile", "bad.yaml", cwd=tmp_path)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    for problem in ["gpus_per_run: 'one' is not of type 'integer'",
                    "seeds: [0, 0] has non-unique elements",
                    "tabel1: unknown key (did you mean 'table1'?); allowed: tier, results,",
                    "threads_per_run: 0 is less than the minimum of 1",
                    "runs (digits/vit_small/pretrain/seed0, digits/vit_small/relvit/seed0, ...): "
                    "optim.lrr: unknown key (did you mean 'lr'?)",
                    "runs (digits/vit_small/pretrain/seed0, digits/vit_small/relvit/seed0, ...): "
                    "optim.schedule: 'cosin' is not one of 'relvit', 'cosine', 'step'"]:
        assert problem in text, (problem, text[-4000:])
    assert text.count("optim.lrr: unknown key") == 1  # said once for every run
    assert not (tmp_path / "results").exists()


def test_hostile_paths_stay_one_argument_in_every_shell_command(tmp_path):
    from test_workflow import DETECTION, TINY

    results, data = "out dir; touch PWNED", "data $(touch PWNED2) 'x'"
    config = {**TINY, "results": results, "data": {"root": data},
              "detection": DETECTION["detection"], "stages": {**TINY["stages"],
                                                              **DETECTION["stages"]}}
    (tmp_path / "hostile.yaml").write_text(yaml.safe_dump(config))
    result = _snakemake("-n", "-p", "--cores", "1", "--configfile", "hostile.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    prefix = "Shell command: "
    commands = [line.strip()[len(prefix):] for line in (result.stdout + result.stderr).splitlines()
                if line.strip().startswith(prefix) and line.strip() != prefix + "None"]
    assert {c.split()[1] for c in commands} >= {"prepare-data", "pretrain", "finetune",
                                                  "supervised", "detect", "report",
                                                  "report-detection", "compare", "figures"}
    import shlex

    for command in commands:
        words = shlex.split(command)
        assert "touch" not in words and not any(w.startswith("$(") for w in words), command
        for word in words:  # a path under the hostile folders is one whole argument
            if "PWNED" in word:
                assert word.startswith((results, data)), (word, command)
    assert not list(tmp_path.glob("PWNED*"))


def test_no_shell_strings_in_python():
    """No os.system / os.popen, and no subprocess call with shell=True, anywhere in the code."""
    offenders = []
    for path in [*ROOT.glob("relvit/**/*.py"), *ROOT.glob("bench/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            shell = any(k.arg == "shell" and not (isinstance(k.value, ast.Constant)
                                                  and k.value.value is False)
                        for k in node.keywords)
            if name in ("os.system", "os.popen") or shell:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []


def test_download_killed_mid_transfer_resumes_and_verifies(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    payload = bytes(range(256)) * 4096
    dest = tmp_path / "downloads"
    with serving(tmp_path / "www") as server:
        resource = server.publish("data.bin", payload, algorithm="sha256")
        server.stall_after = 300_000  # then the connection hangs, as a dying link does
        code = ("import sys; from relvit.data import download as d; d.BLOCK_SIZE = 65536; "
                f"d.download(d.Resource({resource.url!r}, 'data.bin', "
                f"sha256={resource.sha256!r}), sys.argv[1])")
        proc = subprocess.Popen([sys.executable, "-c", code, str(dest)], cwd=ROOT)
        part = dest / "data.bin.part"
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size >= 4 * 65536):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        have = part.stat().st_size
        server.released.set()
        server.stall_after = None
        assert not (dest / "data.bin").exists()  # only a verified file gets the real name
        assert download(resource, dest).read_bytes() == payload
        assert server.hits("data.bin")[-1]["range"] == f"bytes={have}-"
    assert sorted(p.name for p in dest.iterdir()) == ["data.bin"]


def test_a_checkpoint_without_weights_is_no_checkpoint(tmp_path):
    """A torch file of plain data without a 'model' entry is no checkpoint: load_backbone would
    fail on a KeyError, and take_back_replaced take such a best.pt for a finished run's
    weights."""
    from relvit.train.checkpoint import CheckpointError, atomic_save

    atomic_save({"weights": {}, "epoch": 1}, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_checkpoint(tmp_path / "best.pt")
    atomic_save({"model": {}}, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt") == {"model": {}}
