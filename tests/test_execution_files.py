"""Execution files (relvit.execution): the workflow's runs take their execution keys from a
file Snakemake does not track, so that changing them reruns no job (tests/test_workflow.py runs
the workflow)."""

import subprocess
from pathlib import Path

import pytest
import yaml

from relvit.cli import main
from relvit.config import EXECUTION_KEYS, RunConfig, execution_settings, load_config
from relvit.execution import computation, execution_files, write_execution_files


def test_a_run_config_splits_into_what_it_computes_and_how_it_runs():
    config = RunConfig(device="cpu", compile=True).to_dict()
    config["data"]["workers"] = 3
    kept = computation(config)
    assert "device" not in kept and "workers" not in kept["data"] and "compile" not in kept
    assert kept["optim"] == config["optim"] and config["device"] == "cpu"  # a copy
    files = execution_files("results/t", {"d/b/pretrain/seed0": config}, offline=True,
                            data_root="data")
    assert files == {"results/t/execution/d/b/pretrain/seed0.yaml": execution_settings(config),
                     "data/.relvit-prepare-data.yaml": {"data.offline": True}}
    assert list(files["results/t/execution/d/b/pretrain/seed0.yaml"]) == list(EXECUTION_KEYS)
    # `offline: false` (the default) is written too: prepare_data's job reads the file
    assert execution_files("results/t", {}, offline=False, data_root="data") == \
        {"data/.relvit-prepare-data.yaml": {"data.offline": False}}


def test_only_changed_files_are_written(tmp_path):
    first, second = str(tmp_path / "a.yaml"), str(tmp_path / "sub" / "b.yaml")
    assert write_execution_files({first: {"device": "cpu"}, second: {"compile": True}}) == \
        [first, second]
    assert write_execution_files({first: {"device": "cpu"}, second: {"compile": False}}) == \
        [second]
    assert yaml.safe_load((tmp_path / "sub" / "b.yaml").read_text()) == {"compile": False}
    Path(first).write_bytes(b"\xff\xfe\x00garbage")  # not UTF-8: written anew, not a crash
    assert write_execution_files({first: {"device": "cpu"}}) == [first]
    assert yaml.safe_load(Path(first).read_text()) == {"device": "cpu"}


def test_a_run_takes_the_execution_file_over_its_config_and_set_over_both(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("device: cuda\nprecision: fp32\ndata: {name: digits, workers: 2}\n")
    execution = tmp_path / "execution.yaml"
    execution.write_text("device: cpu\ndata.workers: 0\ncompile: true\n")
    cfg = load_config(config, ["compile=false"], execution=execution)
    assert (cfg.device, cfg.precision, cfg.data.workers, cfg.data.name, cfg.compile) == \
        ("cpu", "fp32", 0, "digits", False)


@pytest.mark.parametrize("text, message", [
    ("optim.lr: 0.1\n", "'optim.lr' is not one of device, compile"),
    ("data.workers: many\n", "data.workers: expected int, got str 'many'"),
    ("- device\n", "expected a mapping of config keys"),
])
def test_a_bad_execution_file_is_named(tmp_path, capsys, text, message):
    config = tmp_path / "run.yaml"
    config.write_text("seed: 0\n")
    execution = tmp_path / "execution.yaml"
    execution.write_text(text)
    out = tmp_path / "out"
    assert main(["supervised", "--config", str(config), "--execution", str(execution),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(execution) in err and message in err, err
    assert not out.exists()


def test_check_applies_the_execution_file(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("seed: 0\n")
    execution = tmp_path / "execution.yaml"
    execution.write_text("precision: fp32\n")
    assert main(["check", "--config", str(config), "--execution", str(execution)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["precision"] == "fp32"


def test_check_of_a_workflow_run_config_names_its_execution_file(tmp_path, capsys, caplog):
    """`relvit check --config <results>/configs/<run>.yaml` showed the default execution keys
    without a word that the workflow's job reads others."""
    config = tmp_path / "results" / "configs" / "digits" / "vit_small" / "supervised" / "seed0.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("seed: 0\n")
    assert main(["check", "--config", str(config)]) == 0
    assert not caplog.records  # no execution file written yet
    execution = tmp_path / "results" / "execution" / "digits" / "vit_small" / "supervised"
    execution.mkdir(parents=True)
    (execution / "seed0.yaml").write_text("precision: fp32\n")
    assert main(["check", "--config", str(config)]) == 0
    assert f"reads them from {execution / 'seed0.yaml'}" in caplog.text
    assert yaml.safe_load(capsys.readouterr().out)["precision"] == "bf16"  # stdout stays YAML
    caplog.clear()
    assert main(["check", "--config", str(config), "--execution",
                 str(execution / "seed0.yaml")]) == 0
    assert not caplog.records and yaml.safe_load(capsys.readouterr().out)["precision"] == "fp32"


def test_the_execution_file_is_found_beside_the_last_configs_folder(tmp_path):
    """A results folder inside a folder that is itself named `configs` has its own execution/."""
    from relvit.execution import execution_file_of

    results = tmp_path / "configs" / "results"
    config = results / "configs" / "digits" / "run.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("seed: 0\n")
    execution = results / "execution" / "digits" / "run.yaml"
    assert execution_file_of(config) is None
    execution.parent.mkdir(parents=True)
    execution.write_text("device: cpu\n")
    assert execution_file_of(config) == execution


@pytest.mark.parametrize("text, flag, offline", [
    ("data.offline: true\n", [], True), ("data.offline: false\n", [], False),
    ("data.offline: false\n", ["--offline"], True), ("{}\n", [], False)])
def test_prepare_data_reads_offline_from_its_execution_file(tmp_path, monkeypatch, text, flag,
                                                              offline):
    import relvit.data.prepare as prepare

    calls = []
    monkeypatch.setattr(prepare, "prepare_dataset", lambda *a, **k: calls.append(k["offline"]))
    execution = tmp_path / "prepare_data.yaml"
    execution.write_text(text)
    assert main(["prepare-data", "digits", "--execution", str(execution), *flag]) == 0
    assert calls == [offline]


@pytest.mark.parametrize("text, message", [
    ("data.offline: 'no'\n", "data.offline: expected true or false, got 'no'"),
    ("device: cpu\n", "'device' is not one of data.offline")])
def test_prepare_data_names_a_bad_execution_file(tmp_path, capsys, text, message):
    execution = tmp_path / "prepare_data.yaml"
    execution.write_text(text)
    assert main(["prepare-data", "digits", "--root", str(tmp_path / "data"),
                 "--execution", str(execution)]) == 2
    err = capsys.readouterr().err
    assert str(execution) in err and message in err, err
    assert not (tmp_path / "data").exists()


def test_reports_given_the_whole_results_folder_skip_the_execution_files(tmp_path):
    """`relvit compare results/` took results/execution/*.yaml for run configs and failed."""
    from relvit.report.gather import gather_planned

    config = RunConfig(device="cpu").to_dict()
    (tmp_path / "configs" / "digits").mkdir(parents=True)
    (tmp_path / "configs" / "digits" / "run.yaml").write_text(yaml.safe_dump(computation(config)))
    write_execution_files(execution_files(str(tmp_path), {"digits/run": config}, offline=None,
                                          data_root=str(tmp_path / "data")))
    planned = gather_planned([tmp_path])
    assert len(planned) == 1 and planned["dataset"].iloc[0] == "digits"


def test_a_missing_execution_file_says_who_writes_it(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("seed: 0\n")
    missing = tmp_path / "execution" / "run.yaml"
    assert main(["check", "--config", str(config), "--execution", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: file not found (the workflow's execution files are written" in err


def test_the_generated_results_folders_are_git_ignored():
    """results/execution/ showed in `git status` after the README's first command."""
    from relvit import layout

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    folders = [layout.RUNS, layout.CONFIGS, layout.EXECUTION, "logs", "tables", "figures"]
    paths = [f"results/{folder}/digits/run.yaml" for folder in folders]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=root, capture_output=True,
                             text=True).stdout.split()
    assert ignored == paths
