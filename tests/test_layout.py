"""The run id's format (`layout.RUN_ID`) read back into its fields."""

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
