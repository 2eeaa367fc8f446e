"""The Snakemake workflow: lint, the default DAG, and a tiny end-to-end run that a second
invocation leaves alone."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.bench import bench_script
from fixtures.runs import TINY_DETECTOR
from relvit.config import OptimConfig, RunConfig
from relvit.report.table1 import MEGAPATCHES, SAME_EPOCHS

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"

TINY = {
    "tier": "test", "results": "results", "seeds": [0], "threads_per_run": 1,
    "table1": {"datasets": ["digits"], "backbone": "vit_small", "same_epochs_baseline": True},
    "run": {"device": "cpu", "model": {"embed_dim": 36, "depth": 1, "num_heads": 3},
            "optim": {"batch_size": 256}},
    "stages": {stage: {"optim": {"epochs": 1}} for stage in ("pretrain", "finetune", "supervised")},
}


def snakemake(*args, cwd=ROOT, check=True):
    # this interpreter's bin (`relvit`) first, unless a test put it on PATH behind its stand-ins
    path, venv = os.environ["PATH"], str(Path(sys.executable).parent)
    if venv not in path.split(os.pathsep):
        path = f"{venv}{os.pathsep}{path}"
    env = {**os.environ, "PATH": path}
    result = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), *args], cwd=cwd,
                            capture_output=True, text=True, env=env, timeout=900)
    if check and result.returncode:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
    return result


def job_counts(output: str) -> dict[str, int]:
    lines = output.split("Job stats:")[1].splitlines()
    counts = {}
    for line in lines[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_lint_is_clean():
    result = snakemake("--lint")
    assert "Congratulations" in result.stdout + result.stderr


def repository_like(folder: Path) -> Path:
    """`folder` with the repository's config/ in it: snakemake there reads the Snakefile's
    default config/config.yaml, as from the repository root."""
    shutil.copytree(ROOT / "config", folder / "config")
    return folder


def test_default_dag(tmp_path):
    result = snakemake("-n", "--cores", "2", cwd=repository_like(tmp_path))
    assert job_counts(result.stdout) == {
        "all": 1, "finetune": 3, "pretrain": 9, "prepare_data": 2, "run_config": 30,
        "supervised": 6, "table1": 1, "detect": 12, "detection_plan": 1, "detection_tables": 1,
        "compare": 1, "compare_verdict": 1, "figures": 1,
    }


def test_the_figures_follow_compare_s_criterion(tmp_path):
    """A workflow config's compare criterion reaches both jobs: the figures' red edges mark the
    cells that compare's verdict puts out of tolerance."""
    folder = repository_like(tmp_path)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    (folder / "strict.yaml").write_text(yaml.safe_dump({**config, "compare": {"tolerance": 2.0}}))
    result = snakemake("-n", "-p", "--cores", "2", "--configfile", "strict.yaml", cwd=folder)
    commands = [line for line in result.stdout.splitlines()
                if line.startswith(("Shell command: relvit compare",
                                    "Shell command: relvit figures"))]
    assert len(commands) == 2 and all("--tolerance=2.0" in c for c in commands), commands


def test_a_configfile_replaces_the_default_config(tmp_path):
    """The CI tier from the repository root: its file alone, not merged into the smoke tier's
    (which would add the smoke tier's Swin-T and T2T-ViT mega-patch settings, and so on)."""
    result = snakemake("-n", "--cores", "2", "--configfile", "config/ci.yaml",
                       cwd=repository_like(tmp_path))
    assert "is extended by additional config" not in result.stdout + result.stderr
    assert job_counts(result.stdout) == {
        "all": 1, "finetune": 3, "pretrain": 7, "prepare_data": 2, "run_config": 21,
        "supervised": 3, "table1": 1, "detect": 8, "detection_plan": 1, "detection_tables": 1,
        "compare": 1, "compare_verdict": 1, "figures": 1,
    }


def test_only_the_main_snakemake_records_itself_for_the_lock_release(tmp_path):
    """The snakemake an executor starts per job (`--mode remote` on a cluster node) records no
    pid: another host's record keeps every lock, so the release would never work again."""
    folder = repository_like(tmp_path)
    snakemake("-n", "--mode", "remote", cwd=folder)
    assert not (folder / ".snakemake" / "relvit-pids").exists()
    snakemake("-n", cwd=folder)
    assert len(list((folder / ".snakemake" / "relvit-pids").iterdir())) == 1


def _locked(state: Path) -> list[str]:
    """A Snakemake state folder holding one lock; its path, as the release returns it."""
    (state / "locks").mkdir(parents=True)
    (state / "locks" / "0.input.lock").touch()
    return [str(state / "locks" / "0.input.lock")]


def _recorded(state: Path, host: str, pid: int) -> Path:
    record = state / "relvit-pids" / f"{host}-{pid}"
    record.parent.mkdir(exist_ok=True)
    record.touch()
    return record


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_locks_of_a_dead_snakemake_on_this_host_only_are_released(tmp_path, monkeypatch):
    """A dead snakemake's locks go with its record, and this process records itself; its own
    record, another host's (whether or not that pid lives here) and a live pid of another user
    (PermissionError) keep them. Only Snakemake runs had tested the release."""
    from relvit.workflow import release_stale_locks

    host = socket.gethostname()
    state = tmp_path / "dead" / ".snakemake"
    locks, dead = _locked(state), _recorded(state, host, _dead_pid())
    assert release_stale_locks(str(state)) == locks and not dead.exists()
    assert not (state / "locks" / "0.input.lock").exists()
    assert [p.name for p in (state / "relvit-pids").iterdir()] == [f"{host}-{os.getpid()}"]
    own = tmp_path / "own" / ".snakemake"
    assert release_stale_locks(str(own)) == []  # records this process
    locks = _locked(own)
    assert release_stale_locks(str(own)) == locks  # its own record is no other snakemake

    def kill(pid: int, sig: int) -> None:
        if pid == 4242:
            raise PermissionError(1, "Operation not permitted")
        real_kill(pid, sig)

    real_kill = os.kill
    monkeypatch.setattr(os, "kill", kill)
    for name, record in (("other-host", (f"{host}x", _dead_pid())), ("other-user", (host, 4242))):
        state = tmp_path / name / ".snakemake"
        _locked(state)
        kept = _recorded(state, *record)
        assert release_stale_locks(str(state)) == [], name
        assert (state / "locks" / "0.input.lock").exists() and kept.exists(), name


def test_paper_dag(tmp_path):
    """Table 1: 7 datasets x 3 seeds (ImageNet-1K: 1, as the paper prints no std) x {pretrain,
    finetune, supervised}, plus pretrain + finetune with mega-patches on ImageNet-100. Tables 2-3:
    the paper's 23 detection rows, and the 12 SSL pretrain runs their upstream rows start from.
    From the repository root, as the README runs it (merged into the smoke tier's config, it had
    planned the smoke tier's stand-in data and tiny models)."""
    result = snakemake("-n", "--cores", "8", "--configfile", "config/paper.yaml",
                       cwd=repository_like(tmp_path))
    assert job_counts(result.stdout) == {
        "all": 1, "finetune": 22, "pretrain": 22 + 12, "prepare_data": 7 + 4,
        "run_config": 63 + 23 + 12, "supervised": 19, "table1": 1, "compare": 1,
        "compare_verdict": 1, "figures": 1,
        "detect": 23, "detection_plan": 1, "detection_tables": 1,
    }
    assert "results/runs/imagenet100/vit_small/relvit_mega/seed2/metrics.json" in result.stdout
    assert "results/runs/imagenet/vit_small/supervised/seed1" not in result.stdout


def paper_runs() -> dict:
    """The paper tier's planned runs (config/paper.yaml against the paper's tables.csv)."""
    from relvit.workflow import plan

    return plan(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()),
                str(ROOT / "results" / "paper" / "tables.csv"))


def test_paper_tier_compiles_the_classification_runs_only():
    """`compile: true` where it was measured to pay off (docs/performance.md): every pretrain,
    finetune and supervised run of the GPU tier; not the detection runs (Mask R-CNN's shapes vary
    from batch to batch, never measured compiled)."""
    runs = paper_runs()
    assert {(r.mode, r.config["compile"]) for r in runs.values()} == {
        ("pretrain", True), ("finetune", True), ("supervised", True), ("detect", False)}
    # CUDA graphs for the host-bound 32-px datasets only (`table1.run`), all their methods
    graphs = {(r.dataset, r.mode) for r in runs.values()
              if r.config["compile_mode"] == "reduce-overhead"}
    assert graphs == {(d, m) for d in ("cifar10", "svhn", "cifar100")
                      for m in ("pretrain", "finetune", "supervised")}
    # and the step as one compiled region for those runs, measured with the graphs (H200)
    assert {(r.dataset, r.mode) for r in runs.values() if r.config["compile_step"]} == graphs


def test_paper_tier_drop_path_per_backbone():
    """The original's drop-path (method spec §4, Q15): ViT-S 0.1 as [R]'s README in pretraining
    and classification, 0 in detection (the follow-up's vit.py default); Swin-T its fixed 0.1,
    T2T-ViT-14 0 (it ignored --drop_path_rate); docs/deviations.md says so."""
    runs = paper_runs()
    rates = {(r.config["mode"] == "detect", r.config["model"]["backbone"],
              r.config["model"]["drop_path_rate"]) for r in runs.values()}
    assert rates == {(False, "vit_small", 0.1), (False, "swin_tiny", 0.1),
                     (False, "t2t_vit_14", 0.0), (True, "vit_small", 0.0),
                     (True, "swin_tiny", 0.1), (True, "t2t_vit_14", 0.0)}


TABLE1_OPTIM = {"epochs": 100, "batch_size": 256, "lr": 5e-4, "weight_decay": 0.1,
                "clip_grad": 1.0, "warmup_fraction": 0.1, "schedule": "relvit"}  # spec §5.1
DETECT_OPTIM = {"epochs": 51, "batch_size": 16, "lr": 1e-4, "weight_decay": 1e-4,
                "schedule": "step", "step_epochs": 30, "step_gamma": 0.1,
                "warmup_fraction": 0.0, "clip_grad": 0.0}  # train.slurm, spec §6.5


def test_paper_tier_runs_carry_the_paper_settings_and_their_own_pretraining():
    """Per run of the paper tier: the optimiser of its table, the pretrain run it starts from
    (same dataset, backbone and seed), and the permutation, mega-patches and joint SSL losses
    its row names."""
    runs = paper_runs()
    for run_id, run in runs.items():
        dataset, backbone, method, seed = run_id.split("/")
        cfg = run.config
        expected = DETECT_OPTIM if run.mode == "detect" else TABLE1_OPTIM
        assert {key: cfg["optim"][key] for key in expected} == expected, run_id
        if run.mode == "detect":
            assert cfg["detection"]["iou_crop"] and cfg["detection"]["eval_every"] == 10
            assert cfg["detection"]["ssl_joint"] == (method == "det_joint"), run_id
        if run.mode == "pretrain":
            assert cfg["ssl"]["shuffle"] == ("perm" in method), run_id
            assert (cfg["ssl"]["megapatch_side"] > 0) == ("mega" in method), run_id
        upstream = {"relvit": "pretrain", "det_upstream": "pretrain_det"}
        start = next((method.replace(k, v, 1) for k, v in upstream.items()
                      if method.startswith(k)), None)
        assert run.pretrain == (f"{dataset}/{backbone}/{start}/{seed}" if start else None), run_id
        if start:
            assert runs[run.pretrain].mode == "pretrain"
        if start and run.mode == "detect":
            assert cfg["init_checkpoint"] == f"results/runs/{run.pretrain}/best.pt"


def test_the_same_epochs_baseline_trains_pretrain_plus_finetune_epochs():
    """A supervised run from scratch (no pretraining, no init), as long as the two together;
    a stage without `optim.epochs` counts the run config's default; none unless asked, the
    schema's default (plan() called directly had planned it)."""
    from relvit.workflow import plan

    runs = plan({**TINY, "stages": {"finetune": {"optim": {"epochs": 3}}}})
    baseline = runs["digits/vit_small/supervised_same_epochs/seed0"]
    assert baseline.config["optim"]["epochs"] == OptimConfig.epochs + 3
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    assert schema["properties"]["table1"]["properties"]["same_epochs_baseline"]["default"] is False
    table = {k: v for k, v in TINY["table1"].items() if k != "same_epochs_baseline"}
    assert sorted(r.split("/")[2] for r in plan({**TINY, "table1": table})) == [
        "pretrain", "relvit", "supervised"]

    runs = plan(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    for run_id, run in runs.items():
        if run_id.split("/")[2] == "supervised_same_epochs":
            assert run.mode == run.config["mode"] == "supervised" and run.pretrain is None
            assert not run.config.get("init_checkpoint")
            prefix = run_id.rsplit("/", 2)[0]
            seed = run_id.rsplit("/", 1)[1]
            epochs = [runs[f"{prefix}/{m}/{seed}"].config["optim"]["epochs"]
                      for m in ("pretrain", "relvit")]
            assert run.config["optim"]["epochs"] == sum(epochs) > max(epochs)


# spec §4: (image size, patch size, SSL grid) of Table 1's ViT-S per dataset
TABLE1_GEOMETRY = {"cifar10": (32, 4, 8), "svhn": (32, 4, 8), "cifar100": (32, 4, 8),
                   "tiny_imagenet": (64, 8, 8), "flowers102": (224, 32, 7),
                   "imagenet100": (224, 32, 7), "imagenet": (224, 32, 7)}


def test_paper_table1_runs_are_the_specs_vit_s_and_mega_patch_sides():
    """Table 1: ViT-S/4 at 32 px, /8 on Tiny-ImageNet, /32 at 224 px, the preset's sizes; the
    mega-patch pretraining with `table1.megapatch.side` (6: [R]'s README), Tables 2-3's with
    `detection.megapatch_side` of its backbone."""
    from relvit.config import config_from_dict
    from relvit.geometry import run_geometry

    workflow = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    assert workflow["table1"]["megapatch"]["side"] == 6
    seen = set()
    for run_id, run in paper_runs().items():
        method, cfg = run_id.split("/")[2], run.config
        if run.mode == "detect" or method.startswith("pretrain_det"):
            side = workflow["detection"]["megapatch_side"][cfg["model"]["backbone"]]
            if method.startswith("pretrain_det"):
                assert cfg["ssl"]["megapatch_side"] == (side if "mega" in method else 0), run_id
            continue
        geo = run_geometry(config_from_dict(cfg))
        assert cfg["model"]["backbone"] == "vit_small", run_id
        assert [cfg["model"].get(k) for k in ("embed_dim", "depth", "num_heads")] == [None] * 3
        assert (geo.image_size, geo.patch_size, geo.ssl_grid) == TABLE1_GEOMETRY[run.dataset]
        if run.mode == "pretrain":
            mega = workflow["table1"]["megapatch"]["side"] if method == "pretrain_mega" else 0
            assert cfg["ssl"]["megapatch_side"] == mega, run_id
        seen.add(run.dataset)
    assert seen == set(TABLE1_GEOMETRY)
    # one number for every backbone (the smoke tier's form) had been read as no side at all
    from relvit.workflow import plan
    runs = plan(DETECTION, str(ROOT / "results" / "paper" / "tables.csv"))
    sides = {run_id.split("/")[2]: run.config["ssl"]["megapatch_side"]
             for run_id, run in runs.items() if run.mode == "pretrain"}
    assert sides and all(side == (4 if "mega" in method else 0) for method, side in sides.items())
    assert any("mega" in method for method in sides), sides


def test_mega_patch_runs_differ_from_the_plain_ones_only_where_they_should():
    """relvit_mega is the relvit finetune (its stage's epochs, no SSL settings) from
    pretrain_mega, which is the pretrain run with S set."""
    from relvit.workflow import plan

    workflow = {**TINY, "table1": {**TINY["table1"], "megapatch": {"datasets": ["digits"],
                                                                   "side": 3}},
                "stages": {"pretrain": {"optim": {"epochs": 7}, "ssl": {"shuffle": True}},
                           "finetune": {"optim": {"epochs": 5}},
                           "supervised": {"optim": {"epochs": 9}}}}
    runs = plan(workflow)
    run_id = "digits/vit_small/{}/seed0".format
    # the label puts a run in its Table 1 column (a mega run under same-epochs had passed)
    labels = {run.split("/")[2]: runs[run].config.get("label") for run in runs}
    assert labels == {"pretrain": "", "relvit": "", "supervised": "",
                      "supervised_same_epochs": SAME_EPOCHS, "pretrain_mega": MEGAPATCHES,
                      "relvit_mega": MEGAPATCHES}
    mega, plain = runs[run_id("relvit_mega")], runs[run_id("relvit")]
    assert mega.pretrain == run_id("pretrain_mega") and mega.mode == "finetune"
    assert _without(mega.config, "label") == _without(plain.config, "label")
    pretrain_mega, pretrain = runs[run_id("pretrain_mega")], runs[run_id("pretrain")]
    assert pretrain_mega.config["ssl"]["megapatch_side"] == 3
    assert (_without(pretrain_mega.config, "label", "ssl.megapatch_side")
            == _without(pretrain.config, "label", "ssl.megapatch_side"))


def _without(config: dict, *keys: str) -> dict:
    """A copy of a run config without the dotted `keys`."""
    config = yaml.safe_load(yaml.safe_dump(config))
    for key in keys:
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node[part]
        node.pop(last)
    return config


def test_table1_run_keys_apply_to_their_dataset_only():
    from relvit.workflow import plan

    two = {**TINY, "table1": {**TINY["table1"], "datasets": ["digits", "cifar10"],
                              "run": {"cifar10": {"optim": {"lr": 0.125}}}}}
    runs = plan(two)
    lrs = {(r.dataset, r.config["optim"]["lr"], r.config["seed"]) for r in runs.values()}
    assert lrs == {("digits", RunConfig().optim.lr, 0), ("cifar10", 0.125, 0)}
    assert {r.config["optim"]["batch_size"] for r in runs.values()} == {256}  # merged, not replaced


def test_seeds_per_dataset_and_for_the_detection_rows():
    """`table1.seeds` replaces the global seeds for its datasets only, `detection.seeds` for the
    detection rows and their pretraining; each run's config carries its seed."""
    from relvit.workflow import plan

    config = {**TINY, "seeds": [0, 1],
              "table1": {**TINY["table1"], "datasets": ["digits", "cifar10"],
                         "seeds": {"cifar10": [4]}},
              "detection": {"tables": {"2": {"datasets": ["voc2007"],
                                             "backbones": ["vit_small"]}},
                            "stand_in": "digit_scenes", "megapatch_side": 2, "seeds": [7]}}
    seeds: dict[tuple[str, str], set[int]] = {}
    for run_id, run in plan(config).items():
        assert run_id.endswith(f"/seed{run.config['seed']}")
        seeds.setdefault((run.dataset, run.mode), set()).add(run.config["seed"])
    assert seeds[("digits", "finetune")] == seeds[("digits", "pretrain")] == {0, 1}
    assert seeds[("cifar10", "supervised")] == seeds[("cifar10", "pretrain")] == {4}
    assert seeds[("digit_scenes", "detect")] == seeds[("digit_scenes", "pretrain")] == {7}


def test_table1_run_keys_the_planner_sets_are_an_error():
    """A seed or dataset name per dataset would be overridden by the planner: said, not lost."""
    from relvit.config import ConfigError
    from relvit.workflow import plan

    clash = {**TINY, "table1": {**TINY["table1"], "run": {
        "digits": {"seed": 7, "data": {"name": "cifar10", "workers": 2}}}}}
    with pytest.raises(ConfigError) as err:
        plan(clash)
    assert err.value.problems == [
        "table1.run.digits.data.name: set by the planner (datasets: table1.datasets, "
        "detection.tables), not here",
        "table1.run.digits.seed: set by the planner (seeds: `seeds`, table1.seeds, "
        "detection.seeds), not here"]


def test_shared_run_keys_the_planner_sets_are_an_error():
    """`run:` and `stages:` blocks: a seed, backbone, label or data root there was overridden
    without a word (a label also moved a run out of its Table 1 column; the data root left
    prepare_data filling the workflow's own); an init checkpoint would start a joint detection
    run from it."""
    from relvit.config import ConfigError
    from relvit.workflow import plan

    clash = {**TINY, "run": {**TINY["run"], "seed": 7, "model": {"backbone": "swin_tiny"},
                             "label": "mine", "data": {"root": "/scratch/data"}},
             "stages": {**TINY["stages"], "finetune": {"mode": "supervised"},
                        "detect": {"init_checkpoint": "elsewhere/best.pt"}},
             "detection": {"tables": {"2": {"datasets": ["voc2007"], "backbones": ["vit_small"]}},
                           "stand_in": "digit_scenes", "megapatch_side": {"vit_small": 2},
                           "models": {"vit_small": {"backbone": "swin_tiny"}}}}
    with pytest.raises(ConfigError) as err:
        plan(clash)
    said = "set by the planner ({}), not here".format
    assert err.value.problems == [
        "run.seed: " + said("seeds: `seeds`, table1.seeds, detection.seeds"),
        "run.data.root: " + said("the workflow config's data.root (where prepare_data puts "
                                 "them)"),
        "run.model.backbone: " + said("backbones: table1.backbone, detection.tables"),
        "run.label: " + said("the table column of each method and row"),
        "stages.finetune.mode: " + said("the stage: pretrain, finetune, supervised, detect"),
        "stages.detect.init_checkpoint: "
        + said("the pretrain run's best.pt, for finetune and upstream detect runs"),
        "detection.models.vit_small.backbone: set by the planner (the key above it), not here"]


def test_a_planner_key_set_to_zero_is_an_error_too():
    """`run: {seed: 0}` is overridden by the planner like any other seed: said, not lost (a
    falsy value had passed)."""
    from relvit.config import ConfigError
    from relvit.workflow import plan

    with pytest.raises(ConfigError) as err:
        plan({**TINY, "run": {**TINY["run"], "seed": 0}})
    assert any(p.startswith("run.seed: set by the planner") for p in err.value.problems)


def test_table1_run_keys_of_an_unplanned_dataset_are_an_error():
    from relvit.config import ConfigError
    from relvit.workflow import plan

    typo = {**TINY, "table1": {**TINY["table1"], "run": {"cifar1": {"compile": True}}}}
    with pytest.raises(ConfigError, match=r"table1.run.cifar1: not one of table1.datasets "
                                          r"\(digits\)"):
        plan(typo)


def test_settings_of_unplanned_datasets_or_backbones_are_an_error():
    """A mistyped name in table1.seeds, table1.megapatch or the detection blocks would be
    ignored (ImageNet-1K trained with 3 seeds, a mega-patch row without mega-patches): said."""
    from relvit.config import ConfigError
    from relvit.workflow import plan

    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    paper["table1"]["seeds"] = {"imagnet": [0]}
    paper["table1"]["megapatch"]["datasets"] = ["imagenet10"]
    paper["detection"]["megapatch_side"] = {"vit_smal": 12, "swin_tiny": 6, "t2t_vit_14": 6}
    paper["detection"]["models"]["t2t_vit14"] = {}
    with pytest.raises(ConfigError) as err:
        plan(paper, str(ROOT / "results" / "paper" / "tables.csv"))
    tables = "the tables' backbones (vit_small, swin_tiny, t2t_vit_14)"
    assert err.value.problems == [
        "table1.megapatch.datasets.imagenet10: not one of table1.datasets (cifar10, svhn, "
        "cifar100, flowers102, tiny_imagenet, imagenet100, imagenet)",
        "table1.seeds.imagnet: not one of table1.datasets (cifar10, svhn, cifar100, flowers102, "
        "tiny_imagenet, imagenet100, imagenet)",
        f"detection.megapatch_side.vit_smal: not one of {tables}",
        "detection.megapatch_side.vit_small: missing, and the mega-patch rows of vit_small "
        "need it",
        f"detection.models.t2t_vit14: not one of {tables}"]


def test_bad_run_config_fails_before_any_job(tmp_path):
    config = {**TINY, "run": {"model": {"embed_dim": 36, "patch_size": 5}, "optim": {"lr": "x"}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--cores", "1", "--configfile", "bad.yaml", cwd=tmp_path, check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    # the file named; a problem of every run once, not once per run
    assert f"invalid workflow config {tmp_path / 'bad.yaml'}:" in text
    assert text.count("optim.lr: expected float, got str 'x'") == 1
    assert "runs (digits/vit_small/pretrain/seed0, " in text
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("epochs", ["30", 2.5, None])
def test_epochs_that_are_not_a_number_are_named_not_a_crash(epochs):
    """The same-epochs baseline added pretrain + finetune epochs before they were validated: a
    quoted number gave a bare TypeError from the planner."""
    from relvit.config import ConfigError
    from relvit.workflow import plan

    config = {**TINY, "stages": {"finetune": {"optim": {"epochs": epochs}}}}
    with pytest.raises(ConfigError) as err:
        plan(config, str(ROOT / "results" / "paper" / "tables.csv"))
    assert any("optim.epochs" in problem for problem in err.value.problems), err.value.problems


def test_a_run_problem_names_the_block_its_value_came_from():
    """A typo in `run:`, `stages.<stage>` or `table1.run.<dataset>` was reported by key alone
    ("optim.batch_sise: unknown key"), though the key may be in any of them."""
    from relvit.config import ConfigError
    from relvit.workflow import plan

    config = {**TINY, "run": {**TINY.get("run", {}), "optim": {"batch_sise": 3}},
              "stages": {"finetune": {"optim": {"lr": "fast"}}},
              "table1": {**TINY["table1"], "run": {"digits": {"optim": {"epochs": "x"}}}}}
    with pytest.raises(ConfigError) as err:
        plan(config, str(ROOT / "results" / "paper" / "tables.csv"))
    problems = err.value.problems
    assert any("optim.batch_sise: unknown key" in p and p.endswith("(from run)")
               for p in problems), problems
    assert any("optim.lr: expected float" in p and p.endswith("(from stages.finetune)")
               and "relvit/seed0" in p for p in problems), problems
    assert any("optim.epochs: expected int" in p and p.endswith("(from table1.run.digits)")
               for p in problems), problems
    # given in two blocks, the one merged last is named (the first had been)
    twice = {**TINY, "run": {**TINY["run"], "optim": {"batch_size": 256, "lr": 1e-3}},
             "stages": {**TINY["stages"], "finetune": {"optim": {"epochs": 1, "lr": "fast"}}}}
    with pytest.raises(ConfigError) as err:
        plan(twice)
    lr = [p for p in err.value.problems if "optim.lr: expected float" in p]
    assert len(lr) == 1 and lr[0].endswith("(from stages.finetune)"), err.value.problems
    # the detection pretraining's own stage (not `stages.pretrain`)
    stages = {**DETECTION["stages"], "pretrain_detection": {
        "optim": {"epochs": 1, "batch_size": 64, "lr": "fast"}}}
    with pytest.raises(ConfigError) as err:
        plan({**DETECTION, "stages": stages}, str(ROOT / "results" / "paper" / "tables.csv"))
    lr = [p for p in err.value.problems if "optim.lr: expected float" in p]
    assert lr and all(p.endswith("(from stages.pretrain_detection)") for p in lr), lr


def test_a_problem_of_a_value_the_planner_sets_names_the_block_it_came_from():
    """The mega-patch side that the planner sets from `table1.megapatch.side` (or
    `detection.megapatch_side`) over the stages' had its problem blamed on
    `stages.pretrain`, whose value never reached the run."""
    from relvit.config import ConfigError
    from relvit.workflow import plan

    stages = {**TINY["stages"], "pretrain": {"optim": {"epochs": 1},
                                             "ssl": {"megapatch_side": 0}}}
    config = {**TINY, "stages": stages, "table1": {
        **TINY["table1"], "megapatch": {"datasets": ["digits"], "side": 99}}}
    detection = {**DETECTION, "detection": {**DETECTION["detection"], "megapatch_side": 99}}
    detection["stages"] = {**DETECTION["stages"], "pretrain_detection": {
        **DETECTION["stages"]["pretrain_detection"], "ssl": {"megapatch_side": 0}}}
    for workflow, block in ((config, "table1.megapatch.side"),
                            (detection, "detection.megapatch_side")):
        with pytest.raises(ConfigError) as err:
            plan(workflow, str(ROOT / "results" / "paper" / "tables.csv"))
        side = [p for p in err.value.problems if "ssl.megapatch_side: 99" in p]
        assert side and all(p.endswith(f"(from {block})") for p in side), err.value.problems


def test_values_inside_a_nested_config_value_are_typed():
    from relvit.workflow import typed_config_values

    given = {"seeds": ["0", "1"], "tier": "7", "data": {"offline": "true", "root": "d/x"},
             "run": {"optim": {"lr": "2e-3", "epochs": "5", "schedule": "null"},
                     "label": "a: b"}}
    typed = typed_config_values(given)
    assert typed == {
        "seeds": [0, 1], "tier": "7", "data": {"offline": True, "root": "d/x"},
        "run": {"optim": {"lr": 2e-3, "epochs": 5, "schedule": None}, "label": "a: b"}}
    assert type(typed["run"]["optim"]["epochs"]) is int  # 5.0 had compared equal
    assert typed_config_values({"data": {"offline": "false"}})["data"]["offline"] is False


def test_config_on_the_command_line_and_keys_given_twice(tmp_path):
    """Nested --config values arrived as strings ('false' refused as not a boolean); an error
    of a --config key blamed the file; a key given twice in a workflow config file was taken
    silently, the last one winning."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    result = snakemake("-n", "--cores", "1", "--configfile", "tiny.yaml", "--config",
                       "compare={'fail': false}", "seeds=[0]", cwd=tmp_path)
    counts = job_counts(result.stdout)
    assert "compare_verdict" not in counts and counts["pretrain"] == 1
    result = snakemake("-n", "--cores", "1", "--configfile", "tiny.yaml", "--config",
                       "seedz=[0]", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert (f"invalid workflow config {tmp_path / 'tiny.yaml'} with --config seedz:"
            in result.stdout + result.stderr)
    (tmp_path / "twice.yaml").write_text("seeds: [0, 1]\n" + yaml.safe_dump(TINY))
    result = snakemake("-n", "--cores", "1", "--configfile", "twice.yaml", cwd=tmp_path,
                       check=False)
    assert result.returncode != 0
    assert "twice.yaml: not valid YAML (duplicate key 'seeds'" in result.stdout + result.stderr


def test_a_problem_of_many_runs_is_said_once():
    from relvit.workflow import collapse_run_problems

    assert collapse_run_problems([
        "run.seed: set by the planner", "run a/p/s0: optim.lr: bad", "run a/p/s1: optim.lr: bad",
        "run a/p/s2: optim.lr: bad", "run a/f/s0: model.depth: bad", "run b/f/s0: x: y: z",
        "run c/f/s0: x: y: z"]) == [
        "run.seed: set by the planner", "3 runs (a/p/s0, a/p/s1, ...): optim.lr: bad",
        "run a/f/s0: model.depth: bad", "2 runs (b/f/s0, c/f/s0): x: y: z"]


def test_detection_tables_name_unknown_or_rowless_datasets_and_backbones():
    """A typo in detection.tables had raised a bare KeyError; a dataset with no row in the
    table planned nothing, silently."""
    from relvit.config import ConfigError
    from relvit.workflow import plan

    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    paper["detection"]["tables"] = {
        "2": {"datasets": ["voc2007", "coco"], "backbones": ["vit_small", "swin_t"]},
        "3": {"datasets": ["coco2017", "cifar10", "voc2007"], "backbones": ["vit_small"]}}
    with pytest.raises(ConfigError) as err:
        plan(paper, str(ROOT / "results" / "paper" / "tables.csv"))
    detection = "voc2007, coco2017, kitti, svhn_detection"
    problems = err.value.problems
    assert problems[:2] == [
        f"detection.tables.2.datasets: unknown detection dataset 'coco'; known: {detection}",
        "detection.tables.2.backbones: unknown backbone 'swin_t'; known: vit_tiny, vit_small, "
        "vit_base, swin_tiny, t2t_vit_14"]
    assert problems[2:] == [
        f"detection.tables.3.datasets: unknown detection dataset 'cifar10'; known: {detection}",
        "detection.tables.3.datasets: voc2007 has no row in the paper's Table 3 (with "
        "vit_small)"]


@pytest.mark.parametrize("profile", [[], ["--profile", str(ROOT / "profiles" / "slurm"),
                                            "--executor", "local"]], ids=["plain", "slurm"])
def test_run_config_jobs_run_in_threads(tmp_path, profile):
    """The workflow profile's force-use-threads: the run: jobs write their files from within
    this snakemake instead of starting a Snakemake process each (about 2 s apiece)."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    result = snakemake(*profile, "--cores", "2", "--configfile", "tiny.yaml", "--verbose",
                       "--until", "run_config", cwd=tmp_path)
    configs = sorted(p.relative_to(tmp_path / "results" / "configs").as_posix()
                     for p in (tmp_path / "results" / "configs").rglob("*.yaml"))
    assert configs == [f"digits/vit_small/{method}/seed0.yaml" for method in
                       ("pretrain", "relvit", "supervised", "supervised_same_epochs")]
    assert "spawned job" not in result.stdout + result.stderr
    # what a run computes; how it runs goes to the execution files of the jobs that run
    for name in configs:
        planned = yaml.safe_load((tmp_path / "results" / "configs" / name).read_text())
        assert "device" not in planned and "workers" not in planned["data"]
    assert not (tmp_path / "results" / "execution").exists()  # no training job ran


def test_no_hooks_is_refused_as_the_jobs_need_the_onstart_hook(tmp_path):
    """onstart writes the jobs' execution settings: without it they read missing or stale
    ones (relvit.execution)."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    result = snakemake("-n", "--no-hooks", "--cores", "1", "--configfile", "tiny.yaml",
                       cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "--no-hooks skips the onstart hook" in result.stdout + result.stderr


@pytest.mark.slow
def test_tiny_workflow_end_to_end(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    run = snakemake("--cores", "2", "--configfile", "tiny.yaml", cwd=tmp_path)
    table = (tmp_path / "results" / "tables" / "table1.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| Digits"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "ViT/4 (D=36, depth 1, 3 heads)"
    # Supervised, RelViT, Improv., same epochs: every column filled by a run
    assert [c.endswith("(n=1)") for c in cells[2:]] == [True, True, False, True], cells
    pretext = table.split("## Pretext task")[1]
    assert "| Digits (sklearn) | ViT/4 (D=36, depth 1, 3 heads) |" in pretext
    assert (tmp_path / "results" / "tables" / "table1.tex").is_file()
    again = snakemake("--cores", "2", "--configfile", "tiny.yaml", "-n", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
    # a run folder moved away (README: a failed run retried): a plain snakemake trains it anew
    # and redoes the reports (it had done nothing, the tables still showing the run)
    relvit_run = tmp_path / "results" / "runs" / "digits" / "vit_small" / "relvit" / "seed0"
    relvit_run.rename(tmp_path / "aside")
    dry = snakemake("--cores", "2", "--configfile", "tiny.yaml", "-n", cwd=tmp_path)
    assert {"finetune": 1, "table1": 1}.items() <= job_counts(dry.stdout + dry.stderr).items()
    (tmp_path / "aside").rename(relvit_run)
    # the data root spelt otherwise is the same folder: no job (every run's had been planned)
    dotted = snakemake("--cores", "2", "--configfile", "tiny.yaml", "--config",
                       "data={'root': './data/'}", "-n", cwd=tmp_path)
    assert "Nothing to be done" in dotted.stdout + dotted.stderr, dotted.stdout[-3000:]
    _check_pipeline_times(tmp_path, job_counts(run.stdout + run.stderr))
    # how each run ran: its execution file, not its run config
    execution = tmp_path / "results" / "execution"
    for method in ("pretrain", "relvit", "supervised", "supervised_same_epochs"):
        settings = yaml.safe_load((execution / f"digits/vit_small/{method}/seed0.yaml").read_text())
        assert settings["device"] == "cpu" and settings["data.workers"] == 4
        planned = yaml.safe_load(
            (tmp_path / f"results/configs/digits/vit_small/{method}/seed0.yaml").read_text())
        assert "device" not in planned and "workers" not in planned["data"]
    prepare_data = tmp_path / "data" / ".relvit-prepare-data.yaml"
    assert yaml.safe_load(prepare_data.read_text()) == {"data.offline": False}
    # another tier on the same data root: its own runs, but the data are prepared (the tier's
    # path to the execution file had been a param of prepare_data, which reran it)
    other = snakemake("--cores", "2", "--configfile", "tiny.yaml", "--config",
                      "results=results/other", "-n", cwd=tmp_path)
    counts = job_counts(other.stdout + other.stderr)
    assert counts.get("supervised") and "prepare_data" not in counts, counts
    # execution keys and data.offline changed: no job reruns (their run configs and commands
    # are the same); a job that runs reads the new settings, written for it alone
    changed = {**TINY, "run": {**TINY["run"], "compile": True, "precision": "fp32",
                               "data": {"workers": 0}}, "data": {"offline": True}}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    dry = snakemake("--cores", "2", "--configfile", "changed.yaml", "-n", cwd=tmp_path)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
    rerun = "results/runs/digits/vit_small/supervised/seed0/metrics.json"
    (tmp_path / rerun).unlink()  # restored from finished.json: nothing is trained
    again = snakemake(rerun, "--cores", "2", "--configfile", "changed.yaml", cwd=tmp_path)
    assert job_counts(again.stdout + again.stderr) == {"supervised": 1}
    settings = yaml.safe_load((execution / "digits/vit_small/supervised/seed0.yaml").read_text())
    assert (settings["data.workers"], settings["precision"]) == (0, "fp32")
    others = yaml.safe_load((execution / "digits/vit_small/relvit/seed0.yaml").read_text())
    assert (others["data.workers"], others["precision"]) == (4, "bf16")
    assert yaml.safe_load(prepare_data.read_text()) == {"data.offline": False}


def _check_pipeline_times(project: Path, counts: dict[str, int]) -> None:
    """bench/pipeline_times.py reads the real log of the project's run: every job, finished,
    and the training runs' own time (metrics.json) within their jobs'."""
    with bench_script("pipeline_times") as times:
        log = times.parse_log(times.newest_log(project))
        assert (log.cores, log.workdir) == (2, project)
        rules = [job.rule for job in log.jobs]
        assert {rule: rules.count(rule) for rule in counts} == counts
        assert len(rules) == sum(counts.values()) and all(job.end for job in log.jobs)
        for job in log.jobs:
            own = times.run_seconds(job, log.workdir)
            evaluation = times.evaluation_seconds(job, log.workdir)
            if job.rule in ("pretrain", "finetune", "supervised", "detect"):
                assert 0 < own <= job.seconds + 1, (job, own)  # the log's 1-s resolution
                assert 0 < evaluation < own, (job, evaluation)
            else:
                assert own is None and evaluation is None, job


DETECTION = {
    "tier": "test", "results": "results", "seeds": [0], "threads_per_run": 1,
    "detection": {"tables": {"3": {"datasets": ["coco2017"], "backbones": ["vit_small"]}},
                  "stand_in": "digit_scenes", "megapatch_side": 4,
                  "models": {"vit_small": {"embed_dim": 36, "depth": 1, "num_heads": 3,
                                           "patch_size": 8}}},
    "run": {"device": "cpu", "data": {"workers": 0}},
    "stages": {"pretrain_detection": {"optim": {"epochs": 1, "batch_size": 64}},
               "detect": {"optim": {"epochs": 1, "batch_size": 16, "schedule": "step"},
                          "detection": TINY_DETECTOR}},
}


@pytest.mark.slow
def test_detection_table_end_to_end(tmp_path):
    (tmp_path / "det.yaml").write_text(yaml.safe_dump(DETECTION))
    snakemake("--cores", "2", "--configfile", "det.yaml", cwd=tmp_path)
    table = (tmp_path / "results" / "tables" / "table3.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    # the stand-in dataset and the resized model, named
    assert rows[0].startswith("| COCO mini-val [Digit scenes], ViT/8 (D=36, depth 1, 3 heads) |"
                              " Supervised |"), rows[0]
    assert len(rows) == 4 and "—" not in "".join(rows[:3])  # every row ran
    assert (tmp_path / "results" / "tables" / "table3.tex").is_file()
    assert not (tmp_path / "results" / "tables" / "table2.md").exists()


def test_resized_copy_is_made_by_its_rule_and_read_by_the_runs(tmp_path):
    """`data.resized`: resize_data copies the prepared dataset (after prepare_data) and the
    planned runs read that copy; done once, it is left alone."""
    from fixtures.formats import write_imagefolder

    write_imagefolder(tmp_path / "data" / "imagefolder")  # 8 x 8 images: copied, none resized
    config = {**TINY, "data": {"offline": True, "resized": {"imagefolder": 256}},
              "table1": {"datasets": ["imagefolder"], "backbone": "vit_small"}}
    (tmp_path / "resized.yaml").write_text(yaml.safe_dump(config))
    marker = "data/imagefolder-s256/.relvit-resized.json"
    run_config = "results/configs/imagefolder/vit_small/pretrain/seed0.yaml"
    snakemake(marker, run_config, "--cores", "1", "--configfile", "resized.yaml", cwd=tmp_path)
    record = yaml.safe_load((tmp_path / marker).read_text())
    assert record["shorter_side"] == 256 and record["files"] == record["copied"] == 11  # 9 images, 2 others
    assert (tmp_path / "data/imagefolder-s256/train/cat/c2.png").read_bytes() == \
        (tmp_path / "data/imagefolder/train/cat/c2.png").read_bytes()
    planned = yaml.safe_load((tmp_path / run_config).read_text())
    assert planned["data"]["folder"] == "data/imagefolder-s256"
    dry = snakemake("-n", "--cores", "1", "--configfile", "resized.yaml", cwd=tmp_path)
    jobs = job_counts(dry.stdout)
    assert "resize_data" not in jobs and "prepare_data" not in jobs and jobs["pretrain"] == 1
    config["data"]["resized"] = {"cifar10": 64}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    bad = snakemake("-n", "--cores", "1", "--configfile", "bad.yaml", cwd=tmp_path, check=False)
    assert bad.returncode != 0
    assert "data.resized.cifar10: only image-file datasets" in bad.stdout + bad.stderr


def test_a_moved_checkout_reruns_nothing(tmp_path):
    """The report jobs' --paper param held the checkout's absolute path: in a moved or copied
    checkout, every report job reran ("Params have changed")."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive, check=True)
    (checkout / "Snakefile").write_bytes((ROOT / "Snakefile").read_bytes())
    for rules in (ROOT / "workflow" / "rules").glob("*.smk"):  # this tree's, committed or not
        (checkout / "workflow" / "rules" / rules.name).write_bytes(rules.read_bytes())
    result = subprocess.run([SNAKEMAKE, "-n", "-p", "--cores", "1"], cwd=checkout,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    commands = result.stdout + result.stderr
    assert commands.count(" --paper results/paper/tables.csv ") == 4  # tables 1-3, compare
    assert " --paper /" not in commands


def test_the_schemas_data_root_is_the_run_configs():
    """The workflow's data root (config/schema.yaml's default) and a run config's (DataConfig)
    are one folder: with two defaults, `relvit prepare-data` by hand and the workflow's runs
    would look for the datasets in different places after an edit of one."""
    from relvit.config import DataConfig

    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    assert schema["properties"]["data"]["properties"]["root"]["default"] == DataConfig.root


@pytest.mark.parametrize("change, problem", [
    ({"results": ""}, "results: '' should be non-empty"),
    ({"tier": ""}, "tier: '' should be non-empty"),
    ({"data": {"root": ""}}, "data.root: '' should be non-empty"),
    ({"detection": {"seeds": [0, 0]}}, "detection.seeds: [0, 0] has non-unique elements"),
    ({"detection": {"tables": {}}}, "detection.tables: {} should be non-empty"),
    ({"table1": {**TINY["table1"], "seeds": {"digits": [1, 1]}}},
     "table1.seeds.digits: [1, 1] has non-unique elements"),
])
def test_empty_values_and_repeated_seeds_are_refused(change, problem):
    """An empty `results` or data root put every output under / (prepare-data --root /); a
    repeated detection or per-dataset seed showed one run as two agreeing seeds (± 0.00); empty
    detection tables were blamed on detection.megapatch_side."""
    from relvit.workflow import schema_problems

    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    assert problem in schema_problems({**TINY, **change}, schema)


def test_a_mistyped_block_is_reported_without_the_plans_noise():
    """`table1.datasets: digits` (a string) was followed by the planner's complaints about
    datasets 'd', 'i', 'g', ...; other schema problems still come with the plan's."""
    from relvit.config import ConfigError
    from relvit.workflow import check_workflow_config

    schema = str(ROOT / "config" / "schema.yaml")
    detection = {"tables": {"2": {"datasets": "voc2007", "backbones": ["vit_small"]}}}
    for change, problem in (
            ({"table1": {**TINY["table1"], "datasets": "digits"}},
             "table1.datasets: 'digits' is not of type 'array'"),
            ({"seeds": "01"}, "seeds: '01' is not of type 'array'"),
            ({"detection": detection},
             "detection.tables.2.datasets: 'voc2007' is not of type 'array'")):
        with pytest.raises(ConfigError) as err:
            check_workflow_config({**TINY, **change}, schema)
        assert err.value.problems == [problem]
    # other schema problems, even in the blocks the planner walks, come with the plan's
    both = {**TINY, "tier": "", "seeds": [0, 0], "run": {**TINY["run"], "seed": 3}}
    with pytest.raises(ConfigError) as err:
        check_workflow_config(both, schema)
    assert err.value.problems[:2] == ["seeds: [0, 0] has non-unique elements",
                                      "tier: '' should be non-empty"]
    assert any(p.startswith("run.seed: set by the planner") for p in err.value.problems)


def test_a_resized_copy_lies_under_the_data_root_and_is_at_least_the_input_size():
    """The runs read <data.root>/<dataset>-s<side> (it had been under the default root); a
    side equal to the input size is taken, one pixel less refused, and a dataset without image
    files has no resized copy."""
    from relvit.workflow import plan, resized_problems

    config = {**TINY, "data": {"root": "/scratch/d", "resized": {"imagefolder": 256}},
              "table1": {"datasets": ["imagefolder"], "backbone": "vit_small"}}
    assert {(r.config["data"]["root"], r.config["data"]["folder"])
            for r in plan(config).values()} == {("/scratch/d", "/scratch/d/imagefolder-s256")}
    assert resized_problems({"resized": {"imagefolder": 224}}) == []
    assert resized_problems({"resized": {"imagefolder": 223}}) == [
        "data.resized.imagefolder: the shorter side must be a whole number of pixels of at "
        "least the input size 224, got 223"]
    (problem,) = resized_problems({"resized": {"cifar10": 64}})
    assert problem.startswith(
        "data.resized.cifar10: only image-file datasets cropped by RandomResizedCrop")


def test_a_resized_copy_of_a_dataset_not_planned_is_an_error():
    """`data.resized` naming a dataset Table 1 does not run was ignored without a word, as a
    mistyped name would be; table1.run and table1.seeds already refused theirs."""
    from relvit.config import ConfigError
    from relvit.workflow import plan

    with pytest.raises(ConfigError) as err:
        plan({**TINY, "data": {"resized": {"imagenet100": 256}}})
    assert err.value.problems == [
        "data.resized.imagenet100: not one of table1.datasets (digits)"]


def test_an_unknown_top_level_key_is_named_with_the_closest_known_one():
    """`seedz:` at the top: named bare (it had come out as ".seedz"), with the closest key."""
    from relvit.workflow import schema_problems

    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    (problem,) = schema_problems({**TINY, "seedz": [0]}, schema)
    assert problem.startswith("seedz: unknown key (did you mean 'seeds'?); allowed: tier, ")


def test_later_workflow_files_override_earlier_ones(monkeypatch):
    """ci.yaml then ci-spread.yaml, as Snakemake merges them: the spread file's seeds and
    results folder win (the first file's had, and `relvit check-workflow` said only "valid")."""
    from relvit.workflow import check_workflow_files

    monkeypatch.chdir(ROOT)
    runs = check_workflow_files(["config/ci.yaml", "config/ci-spread.yaml"], "config/schema.yaml")
    seeds = {(r.mode == "detect" or "pretrain_det" in i, r.config["seed"]) for i, r in runs.items()}
    assert seeds == {(False, 3), (False, 4), (False, 5), (True, 2), (True, 3)}
    starts = {r.config["init_checkpoint"] for r in runs.values() if r.mode == "detect"
              and r.config.get("init_checkpoint")}
    assert starts and all(s.startswith("results/ci-spread/runs/") for s in starts), starts


def test_check_workflow_validates_and_plans_the_configfiles(tmp_path, capsys):
    """`relvit check-workflow`: what Snakemake would plan from the same --configfile files,
    before Snakemake reads them (its own YAML errors name neither file nor line)."""
    from relvit.cli import main

    assert main(["check-workflow", "config/paper.yaml"]) == 0
    assert capsys.readouterr().out.startswith("config/paper.yaml: valid; 98 runs planned (")
    assert main(["check-workflow", "config/ci.yaml", "config/ci-spread.yaml"]) == 0
    assert "config/ci.yaml, config/ci-spread.yaml: valid;" in capsys.readouterr().out
    broken = tmp_path / "broken.yaml"
    broken.write_text("tier: x\nseeds: [0\n")
    assert main(["check-workflow", "config/ci.yaml", str(broken)]) == 2
    assert f"{broken}: not valid YAML (while parsing a flow sequence" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "tier": "", "run": {"optim": {"lrr": 1}}}))
    assert main(["check-workflow", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"invalid workflow config {bad}:" in err and "tier: '' should be non-empty" in err
    assert "optim.lrr: unknown key (did you mean 'lr'?)" in err
    # another file given as --schema had ended in a traceback
    for schema, reason in (("results/expected/ci.yaml", "no $schema key"),
                           (str(broken), "while parsing a flow sequence"),
                           (str(tmp_path / "none.yaml"), "No such file or directory")):
        assert main(["check-workflow", "config/ci.yaml", "--schema", schema]) == 1
        assert f"{schema}: not a workflow config schema ({reason}" in capsys.readouterr().err


def test_snakemake_ends_by_saying_where_the_results_are_or_how_to_go_on(tmp_path):
    """A finished run had ended with "N of N steps (100%) done", naming no table; a failed one
    with "At least one job did not complete successfully", not saying that a rerun resumes."""
    from fixtures.formats import write_imagefolder

    config = {**TINY, "data": {"offline": True},
              "table1": {"datasets": ["imagefolder"], "backbone": "vit_small"}}
    (tmp_path / "images.yaml").write_text(yaml.safe_dump(config))
    marker = "data/imagefolder/.relvit-ready.json"
    args = (marker, "--cores", "1", "--configfile", "images.yaml")
    failed = snakemake(*args, cwd=tmp_path, check=False)  # no images there: prepare_data fails
    assert failed.returncode != 0
    assert "relvit: a job failed or was stopped (Snakemake names its log above). Finished runs " \
        "are kept: once the cause is fixed, the same command resumes" in failed.stderr
    write_imagefolder(tmp_path / "data" / "imagefolder")
    done = snakemake(*args, cwd=tmp_path)
    assert "relvit: every requested target is done; the pipeline's tables are in " \
        "results/tables/" in done.stderr


def test_braces_in_the_results_or_data_folder_are_named():
    """Snakemake reads { and } in a path as a wildcard: `results: res{x}ults` failed in
    Snakemake's own rule check ("Not all output, log and benchmark files of rule prepare_data
    contain the same wildcards") while check-workflow said valid."""
    from relvit.config import ConfigError
    from relvit.workflow import check_workflow_config

    schema = str(ROOT / "config" / "schema.yaml")
    with pytest.raises(ConfigError) as err:
        check_workflow_config({**TINY, "results": "res{x}ults",
                               "data": {**TINY.get("data", {}), "root": "da}ta"}}, schema)
    assert [p.split(";")[0] for p in err.value.problems] == [
        "data.root: 'da}ta' does not match '^[^{}]*$'",
        "results: 'res{x}ults' does not match '^[^{}]*$'"]
    assert all("Snakemake reads them as wildcards" in p for p in err.value.problems)
