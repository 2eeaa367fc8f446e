"""bench/gpu_run_check.sh's dry run on the CPU (`--device cpu`: a tiny model, no compile), so
that a broken script is found here rather than in a lent GPU's few minutes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_run_check_trains_and_compares_every_run(tmp_path):
    """One mode with --step, at Tiny-ImageNet's 64 px (ViT-S/8; the next test runs 32 px),
    against a compiled baseline, as the paper tier runs Tiny-ImageNet."""
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    result = subprocess.run(
        ["bash", "bench/gpu_run_check.sh", "--device", "cpu", "--size", "64", "--step",
         "--mode", "pretrain"],
        cwd=ROOT, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable,
                       "TMPDIR": str(scratch)},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert "ViT-S/8 at 64 px" in summary, summary
    runs = ("pretrain-compiled", "pretrain-graphs", "pretrain-graphs-step")
    for run in runs:
        assert f"pretrain {run}: exit 0\n" in summary, summary
    assert "comparison: exit 0" in summary, summary
    # the three pairs (the baseline against each graphs run, graphs against the step region)
    # compared on every epoch
    assert summary.count(": 2 of 2 epochs; largest train_loss rel. diff") == 3, summary
    assert summary.count("peak memory pretrain-compiled / pretrain-graphs") == 2, summary
    assert "peak memory pretrain-graphs / pretrain-graphs-step" in summary, summary
    with tarfile.open(out / "runs.tar.gz") as tar:
        configs = {run: yaml.safe_load(tar.extractfile(f"./{run}/config.yaml")) for run in runs}
        assert {f"./{run}/history.csv" for run in runs} <= set(tar.getnames())
    assert [(c["compile"], c["compile_mode"], c["compile_step"]) for c in configs.values()] == [
        (True, "default", False), (True, "reduce-overhead", False),
        (True, "reduce-overhead", True)]
    assert {(c["data"]["image_size"], c["model"]["patch_size"]) for c in configs.values()} == {
        (64, 8)}
    # data and checkpoints in a scratch folder, removed: a call cut at its limit returns $OUT
    assert {p.name for p in out.iterdir()} == {"summary.txt", "run.yaml", "runs.tar.gz"}
    assert not list(scratch.glob("gpu-run-check.*"))


def test_run_check_sets_each_pretrain_run_against_its_supervised_run(tmp_path):
    """Both modes with --step --skip-graphs (224 px's one-call form, here at 32 px): the eager
    and step-region runs only, each pretrain run against the supervised run of its kind, and at
    32 px a CIFAR-10 row's hours."""
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", "bench/gpu_run_check.sh", "--device", "cpu", "--step", "--skip-graphs"],
        cwd=ROOT, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable,
                       "TMPDIR": str(tmp_path)},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert "comparison: exit 0" in summary, summary  # no run asked for that did not run
    with tarfile.open(out / "runs.tar.gz") as tar:
        runs = {name.split("/")[1] for name in tar.getnames() if name.count("/") == 2}
    assert runs == {f"{mode}-{kind}" for mode in ("pretrain", "supervised")
                    for kind in ("eager", "graphs-step")}
    for mode in ("pretrain", "supervised"):
        assert f"{mode}-eager vs {mode}-graphs-step\n" in summary, summary
    for kind in ("eager", "graphs-step"):
        assert re.search(rf"pretrain-{kind} vs supervised-{kind}: training [\d,]+ vs [\d,]+ "
                         r"images/s .*; pretrain step / supervised step \d+\.\d\dx", summary)
        assert f"peak memory supervised-{kind} / pretrain-{kind}: " in summary
    assert summary.count("Projected Table 1 CIFAR-10 row") == 2, summary


def test_a_cut_call_returns_the_runs_that_finished(tmp_path):
    """The comparison and the runs' archive were only written at the end: a call cut by the
    device's limit returned the exit codes alone. Both are now rewritten after every run."""
    import signal
    import time

    out = tmp_path / "out"
    process = subprocess.Popen(
        ["bash", "bench/gpu_run_check.sh", "--device", "cpu", "--step", "--mode", "pretrain"],
        cwd=ROOT, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable,
                       "TMPDIR": str(tmp_path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "comparison.txt").is_file():  # after the second run
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the cut
        process.wait()
    comparison = (out / "comparison.txt").read_text()
    assert "pretrain-eager vs pretrain-graphs" in comparison
    assert ": 2 of 2 epochs; largest train_loss rel. diff" in comparison
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"./pretrain-eager/history.csv", "./pretrain-graphs/history.csv"} <= names


def test_caps_over_the_budget_are_refused_before_anything_runs(tmp_path):
    """A call whose caps exceed the device's 600 s, or the session's time left, would be cut
    mid-run: 224 px with --step and both modes is 736 s of caps."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
           "TMPDIR": str(tmp_path)}
    refused = subprocess.run(["bash", "bench/gpu_run_check.sh", "--size", "224", "--step"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert ("the runs' caps come to 736 s (with 40 s of fixed work), over the budget of 570 s"
            in refused.stderr)
    less = subprocess.run(["bash", "bench/gpu_run_check.sh", "--step", "--budget", "500"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert less.returncode == 2 and "caps come to 606 s (with 40 s of fixed work), over the " \
        "budget of 500 s" in less.stderr
    # both modes at 224 px in one call: the step region against the compiled runs only
    both = subprocess.run(["bash", "bench/gpu_run_check.sh", "--size", "224", "--step",
                           "--skip-graphs", "--budget", "400"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "caps come to 504 s (with 40 s of fixed work), over the " \
        "budget of 400 s" in both.stderr
    alone = subprocess.run(["bash", "bench/gpu_run_check.sh", "--skip-graphs"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert alone.returncode == 2 and "--skip-graphs needs --step" in alone.stderr
    # Tiny-ImageNet's 64 px (ViT-S/8): both modes in one call with --skip-graphs only
    small = subprocess.run(["bash", "bench/gpu_run_check.sh", "--size", "64", "--step"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert small.returncode == 2 and "caps come to 766 s (with 40 s of fixed work), over the " \
        "budget of 570 s" in small.stderr
    # a budget that is no whole number had switched the check off; one over a call's 570 s
    # had let a call's caps pass its 600 s
    for budget, problem in (("100.5", "--budget: whole seconds, not 100.5"),
                            ("780s", "--budget: whole seconds, not 780s")):
        bad = subprocess.run(["bash", "bench/gpu_run_check.sh", "--budget", budget], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and problem in bad.stderr
    octal = subprocess.run(["bash", "bench/gpu_run_check.sh", "--step", "--budget", "0500"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert octal.returncode == 2 and "over the budget of 500 s" in octal.stderr  # not octal
    over = subprocess.run(["bash", "bench/gpu_run_check.sh", "--step", "--budget", "780"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert over.returncode == 2 and "780 s is over a device call's 570 s: using 570" in \
        over.stderr and "caps come to 606 s (with 40 s of fixed work)" in over.stderr
    for args, problem in ((["--size", "48"], "--size: 32, 64 or 224, not 48"),
                          (["--size", "224", "--patch", "24"],
                           "--patch: a whole number dividing the size (224 px), not 24")):
        bad = subprocess.run(["bash", "bench/gpu_run_check.sh", *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and problem in bad.stderr, bad.stderr
    assert not list(tmp_path.glob("gpu-run-check.*"))  # no data written
    assert not (tmp_path / "out").exists()  # nor a summary: refused before Python starts


def test_the_one_shot_check_fits_a_device_call():
    """bench/gpu_check.sh's GPU caps, each part's 5 s kill grace and the start-up stay inside a
    device call's 600 s (the compile part runs once per size), so a slow machine cuts a part,
    not the call and its files (the caps once came to 605 s)."""
    script = (ROOT / "bench/gpu_check.sh").read_text()
    caps_line = next(line for line in script.splitlines() if line.strip().startswith("T_CTESTS="))
    caps = {name: int(value) for name, value in re.findall(r"(T_\w+)=(\d+)", caps_line)}
    sizes = len(re.search(r"for size in ([\d ]+); do", script).group(1).split())
    parts = re.findall(r'timeout -k (\d+) "\$(T_\w+)"', script)
    assert {cap for _, cap in parts} == set(caps)  # every cap bounds a part
    worst = sum((caps[cap] + int(grace)) * (sizes if cap == "T_COMPILE" else 1)
                for grace, cap in parts)
    assert worst <= 585, worst  # 15 s for the versions line and the archives


def test_a_part_cut_at_its_cap_says_so_and_a_finished_one_does_not(tmp_path):
    """gpu_common.sh's `ended`: the summary lines had said "exit 0 (124: cut at its 45 s cap)"
    after every part, a legend that read like a cut."""
    script = ('source bench/gpu_common.sh; timeout 1 sleep 5; ended 1 "slow part"; '
              'true; ended 9 "quick part"')
    result = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "OUT": str(tmp_path), "DEVICE": "cpu", "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert lines[-2].endswith("] slow part: exit 124 (cut at its 1 s cap)"), lines
    assert lines[-1].endswith("] quick part: exit 0"), lines
