"""scikit-learn's 1,797 handwritten 8x8 digits and their fixed train/test split, read without
importing scikit-learn: its import had taken 0.9 s of every digits run's 6-s start on 2 cores.

The pixels come from the CSV file scikit-learn ships (what `sklearn.datasets.load_digits`
reads); the split is scikit-learn's stratified `train_test_split` (`SPLIT_SEED`,
`TEST_FRACTION`), written down once in relvit/data/digits_split.py, so that it does not change
with scikit-learn's version either. `python -m relvit.data.digit_source` writes that file anew
from scikit-learn; tests/test_digit_source.py checks both against scikit-learn's own. Used by the
classification dataset (relvit.data.digits) and the detection scenes (relvit.detection.scenes);
numpy only.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

SPLIT_SEED = 0  # the train/test split is fixed, whatever the run's seed
TEST_FRACTION = 0.2
DIGITS_CSV = ("datasets", "data", "digits.csv.gz")  # under scikit-learn's package folder
SPLIT_MODULE = Path(__file__).with_name("digits_split.py")


def digits_csv() -> Path:
    """scikit-learn's digits file, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-learn is not installed: its digits are the embedded "
                                "dataset (pip install scikit-learn)")
    return Path(spec.submodule_search_locations[0], *DIGITS_CSV)


@lru_cache(maxsize=1)
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """(pixels float64 [1797, 8, 8] in 0..16, labels int64 [1797]), as `load_digits` gives
    them."""
    path = digits_csv()
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            data = np.loadtxt(handle, delimiter=",")
    except (OSError, ValueError) as err:
        raise OSError(f"{path}: cannot read scikit-learn's digits ({err})") from err
    if data.ndim != 2 or data.shape[1] != 8 * 8 + 1:
        raise OSError(f"{path}: expected rows of 64 pixels and a label, got shape {data.shape}")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def digit_split() -> tuple[np.ndarray, np.ndarray]:
    """(train indices [1437], test indices [360]) into `digit_images`, in scikit-learn's
    order (its stratified split; the order is the runs' order of samples)."""
    from relvit.data.digits_split import TEST, TRAIN

    return np.asarray(TRAIN, dtype=np.int64), np.asarray(TEST, dtype=np.int64)


def sklearn_split() -> tuple[np.ndarray, np.ndarray]:
    """The split as scikit-learn computes it (imports scikit-learn)."""
    from sklearn.model_selection import train_test_split

    labels = digit_images()[1]
    train, test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION,
                                   random_state=SPLIT_SEED, stratify=labels)
    return np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)


def _tuple_lines(name: str, values: np.ndarray) -> list[str]:
    """`name = (...)`, 16 numbers a line."""
    rows = [", ".join(str(int(v)) for v in values[i:i + 16]) for i in range(0, len(values), 16)]
    return [f"{name} = (", *(f"    {row}," for row in rows), ")"]


def write_split_module(path: Path = SPLIT_MODULE) -> None:
    """Write `sklearn_split()` to `path` as the module `digit_split` reads."""
    import sklearn

    train, test = sklearn_split()
    lines = ['"""The digits\' train/test split: scikit-learn ' + sklearn.__version__
             + "'s stratified train_test_split",
             f"(test_size={TEST_FRACTION}, random_state={SPLIT_SEED}), written by "
             "`python -m relvit.data.digit_source`."
             '"""', "", *_tuple_lines("TRAIN", train), "", *_tuple_lines("TEST", test)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_split_module()
    print(f"wrote {SPLIT_MODULE}")
