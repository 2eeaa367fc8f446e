"""scikit-learn's digits read without importing scikit-learn: the same pixels, labels and split
as `load_digits` and its stratified `train_test_split` give."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pytest

from relvit.data import digit_source


def test_the_digits_are_load_digits_pixels_and_labels():
    from sklearn.datasets import load_digits

    pixels, labels = digit_source.digit_images()
    digits = load_digits()
    assert pixels.dtype == digits.images.dtype and np.array_equal(pixels, digits.images)
    assert labels.dtype == np.int64 and np.array_equal(labels, digits.target)


def test_the_written_split_is_scikit_learns_in_its_order():
    """relvit/data/digits_split.py against scikit-learn's installed version: the order too,
    which is the runs' order of samples (rewrite it with `python -m relvit.data.digit_source`)."""
    train, test = digit_source.digit_split()
    expected_train, expected_test = digit_source.sklearn_split()
    assert (len(train), len(test)) == (1437, 360)
    assert np.array_equal(train, expected_train) and np.array_equal(test, expected_test)


def test_the_split_module_is_written_from_scikit_learn(tmp_path):
    path = tmp_path / "split.py"
    digit_source.write_split_module(path)
    written: dict = {}
    exec(path.read_text(), written)  # noqa: S102 - the file just written
    train, test = digit_source.sklearn_split()
    assert np.array_equal(written["TRAIN"], train) and np.array_equal(written["TEST"], test)
    assert max(len(line) for line in path.read_text().splitlines()) <= 100


@pytest.fixture
def digits_file(tmp_path, monkeypatch):
    """scikit-learn's digits file replaced by one the test writes."""
    path = tmp_path / "digits.csv.gz"
    monkeypatch.setattr(digit_source, "digits_csv", lambda: path)
    digit_source.digit_images.cache_clear()
    yield path
    digit_source.digit_images.cache_clear()


@pytest.mark.parametrize("content, problem", [
    ("1,2,3,4,5,6,7,8,9\n" * 2, "expected rows of 64 pixels and a label, got shape (2, 9)"),
    ("a,b,c\n", "cannot read scikit-learn's digits")])
def test_a_damaged_digits_file_is_named(digits_file, content, problem):
    """Rows of another width, or text, are an OSError naming the file (they had passed as
    pixels, or come out as numpy's ValueError)."""
    with gzip.open(digits_file, "wt") as handle:
        handle.write(content)
    with pytest.raises(OSError) as err:
        digit_source.digit_images()
    assert str(err.value).startswith(f"{digits_file}: {problem}")


def test_a_digits_run_imports_no_scikit_learn():
    """Its import had taken 0.9 s of a digits run's 6-s start."""
    code = ("import sys; from relvit.data.digits import load_digits_splits; "
            "load_digits_splits(16); import relvit.detection.scenes as s; s._digit_pools(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_an_unreadable_digits_file_is_named(tmp_path, monkeypatch):
    bad = tmp_path / "digits.csv.gz"
    bad.write_bytes(b"not gzip")
    monkeypatch.setattr(digit_source, "digits_csv", lambda: bad)
    digit_source.digit_images.cache_clear()
    try:
        with pytest.raises(OSError, match=f"{bad}: cannot read scikit-learn's digits"):
            digit_source.digit_images()
    finally:
        digit_source.digit_images.cache_clear()
