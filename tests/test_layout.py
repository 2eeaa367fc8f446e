"""Where a run's files are: the run id's format (`layout.RUN_ID`) read back into its fields,
the folders of its files, and moved-aside names."""

from __future__ import annotations

import pytest

from relvit.layout import run_id, run_id_fields


def test_a_run_ids_fields_come_back_from_it():
    fields = {"dataset": "digit_scenes", "backbone": "swin_tiny", "method": "det_relvit",
              "seed": "3"}
    assert run_id(**fields) == "digit_scenes/swin_tiny/det_relvit/seed3"
    assert run_id_fields(run_id(**fields)) == fields


@pytest.mark.parametrize("other", ["digits/vit_small/pretrain", "digits/vit_small/pretrain/0",
                                   "a/b/c/d/seed0", "a//c/seed0", "a/b/c/seed"])
def test_a_string_of_another_form_has_no_fields(other):
    assert run_id_fields(other) is None


def test_moved_aside_folders_sort_by_time_then_number():
    """Names sorted as text had put a second's tenth move (`-10`) before its second (`-2`)."""
    from relvit.layout import replaced_name, replaced_order

    stamps = ["20261129-095959", "20261129-100000", "20261129-100000-2", "20261129-100000-9",
              "20261129-100000-10", "20261129-100001"]
    names = [replaced_name("seed0", stamp) for stamp in stamps]
    assert sorted(reversed(names), key=replaced_order) == names
    assert sorted(names) != names  # what the plain sort gives


def test_a_runs_files_are_under_their_folders(tmp_path):
    """The workflow's rules take these paths from layout; `relvit check` finds the execution
    file of a run config by its configs folder (relvit.execution)."""
    from pathlib import Path

    from relvit.execution import execution_file_of
    from relvit.layout import metrics_file, run_config_file, run_dir

    run = "digits/vit_small/pretrain/seed0"
    config = run_config_file(str(tmp_path), run)
    assert Path(config) == tmp_path / "configs" / "digits/vit_small/pretrain/seed0.yaml"
    execution = tmp_path / "execution" / "digits/vit_small/pretrain/seed0.yaml"
    execution.parent.mkdir(parents=True)
    execution.write_text("device: cpu\n")
    assert execution_file_of(config) == execution
    assert run_dir("results/ci", run) == "results/ci/runs/digits/vit_small/pretrain/seed0"
    assert metrics_file("results/ci", run) == f"{run_dir('results/ci', run)}/metrics.json"
