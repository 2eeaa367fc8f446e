"""A failed run's metrics.json (relvit/train/failure.py) and a finished run's record
(relvit/train/finished.py)."""

import json

from relvit.layout import HISTORY, METRICS
from relvit.train import failure, finished
from relvit.train.errors import NonFiniteLossError, TrainingError


def test_a_non_finite_loss_counts_the_epochs_before_it(tmp_path, tiny_config):
    """Counting the failed epoch itself would claim one epoch more than last.pt holds."""
    error = NonFiniteLossError("loss is nan", epoch=3, step=5)
    metrics = failure.failed_metrics(tiny_config("supervised"), tmp_path, error)
    assert metrics["failed_epoch"] == 3 and metrics["failed_step"] == 5
    assert metrics["epochs_completed"] == 2


def test_epochs_completed_from_history_leaves_out_the_header(tmp_path, tiny_config):
    """Counting history.csv's header line would make two epochs three."""
    (tmp_path / HISTORY).write_text("epoch,loss\n1,0.9\n2,0.8\n")
    metrics = failure.failed_metrics(tiny_config("supervised"), tmp_path, TrainingError("x"))
    assert metrics["failed_epoch"] is None
    assert metrics["epochs_completed"] == 2


def test_a_failed_run_names_its_cell_and_resized_copy_as_a_finished_one(tmp_path, tiny_config):
    """The failed record's identity is the finished record's (relvit.geometry.run_identity), and
    a run on a resized copy says so: the cell keeps its "resized" note when every seed failed."""
    from PIL import Image

    from relvit.data.resize import ResizeSettings, resize_tree
    from relvit.geometry import run_identity

    (tmp_path / "images" / "a").mkdir(parents=True)
    Image.new("RGB", (12, 8)).save(tmp_path / "images" / "a" / "x.png")
    resize_tree(tmp_path / "images", tmp_path / "copy", ResizeSettings(6), workers=0)
    cfg = tiny_config("supervised", data={"folder": str(tmp_path / "copy")})
    metrics = failure.failed_metrics(cfg, tmp_path, TrainingError("x"))
    assert run_identity(cfg).items() <= metrics.items()
    assert metrics["data_copy"] == {"shorter_side": 6, "quality": 90}
    plain = failure.failed_metrics(tiny_config("supervised"), tmp_path, TrainingError("x"))
    assert plain["data_copy"] is None


def test_only_rank_zero_records_a_failure(tmp_path, monkeypatch, tiny_config):
    """A rank other than 0 (here 2) writing metrics.json would race rank 0 for the file."""
    monkeypatch.setenv("RANK", "2")
    error = NonFiniteLossError("loss is nan", epoch=1, step=1)
    assert failure.record_failure(tiny_config("supervised"), tmp_path, error) is None
    assert not (tmp_path / METRICS).exists()


def test_record_changes_names_a_changed_hash_and_init_file():
    """Missing either change would restore a finished run made from another config or init."""
    record = {"config_hash": "a" * 16, "init_sha256": "d1"}
    assert finished.record_changes(record, "a" * 16, "d1") == []
    hash_changes = finished.record_changes(record, "b" * 16, "d1")
    assert len(hash_changes) == 1 and "config hash" in hash_changes[0]
    init_changes = finished.record_changes(record, "a" * 16, "d2")
    assert len(init_changes) == 1 and "init_checkpoint" in init_changes[0]


def test_a_record_without_a_config_hash_is_not_a_finished_run(tmp_path):
    """Taking {} for a record would fail later on record["config_hash"] instead of rerunning."""
    (tmp_path / finished.FINISHED).write_text(json.dumps({}))
    assert finished.read_finished(tmp_path) is None


def test_a_failed_runs_record_keeps_a_finished_runs_provenance_keys(tmp_path, tiny_config):
    """A failed run's record has a finished run's provenance keys (`Run.finish`), versions
    included: what reads them finds them in either."""
    error = NonFiniteLossError("loss is nan", epoch=2, step=3)
    metrics = failure.failed_metrics(tiny_config("supervised"), tmp_path, error)
    assert {"versions", "git_sha", "config_hash", "execution", "image"} <= metrics.keys()
    assert {"python", "relvit", "torch", "torchvision", "timm", "numpy"} <= \
        metrics["versions"].keys()
    assert metrics["error_type"] == "NonFiniteLossError"


def test_an_init_checkpoint_gone_since_is_no_change_of_a_finished_run():
    """A finished finetune whose upstream best.pt was removed since (no digest to compare) is
    the same run, not one to refuse or train again."""
    record = {"config_hash": "a" * 16, "init_sha256": "d1"}
    assert finished.record_changes(record, "a" * 16, None) == []
    assert finished.record_changes({"config_hash": "a" * 16}, "a" * 16, "d2") == []


def test_finished_json_is_the_record_before_metrics_json(tmp_path):
    """metrics.json is the workflow's output, which Snakemake deletes or a stale copy may hold;
    finished.json is the record, read first."""
    (tmp_path / finished.FINISHED).write_text(json.dumps({"config_hash": "new", "n": 1}))
    (tmp_path / "metrics.json").write_text(json.dumps({"config_hash": "old", "n": 0}))
    assert finished.read_finished(tmp_path)["config_hash"] == "new"
