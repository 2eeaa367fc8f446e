"""`relvit prepare-data`: download, verify, extract and check a dataset, then mark it ready.

Downloadable datasets are fetched from their official sources with checksums; archives go to
`<root>/.downloads/<name>/` and are extracted into `<root>/<name>/`. ImageNet-1K, ImageNet-100
and KITTI need an account: their files are checked where the user put them, and a missing or
wrong layout is reported with exactly what to put where. The marker `<root>/<name>/
.relvit-ready.json` (in `--folder`'s folder, if given) is written last, so its presence means the
dataset is complete and its layout readable.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from relvit.config import DataConfig
from relvit.data.download import fetch
from relvit.data.formats import DatasetLayoutError
from relvit.data.loading import dataset_folder, load_splits
from relvit.data.registry import DatasetSpec, get_dataset
from relvit.atomic import atomic_write_text
from relvit.locks import folder_lock, lock_beside
from relvit.layout import READY

log = logging.getLogger("relvit")


def ready_marker(root: str | Path, name: str) -> Path:
    return Path(root) / name / READY


def prepare_dataset(name: str, root: str | Path = DataConfig.root, folder: str | None = None,
                    offline: bool = False, extract_again: bool = False) -> dict[str, Any]:
    """Make dataset `name` ready under `root` (or `folder`); returns what the marker records.

    The layout check reads the files that list a dataset (archives' pickles, .mat files,
    annotations, class folders), not every image: `extract_again` unpacks the checked archives
    anew, for images found damaged or deleted later."""
    spec = get_dataset(name)
    data = DataConfig(name=name, root=str(root), folder=folder)
    target = dataset_folder(spec, data)
    # two processes at once would resume each other's downloads and clear each other's
    # extractions: the second waits, and then finds the dataset ready (its marker, which the
    # first's workflow checks once its job ends, left in place)
    marker = Path(folder) / READY if folder else ready_marker(root, name)
    with folder_lock(lock_beside(target, "prepare"), target, "preparing") as waited:
        record = _marker_record(marker) if waited and not extract_again else None
        if record is not None:
            log.info("%s: made ready by the process waited for (%s)", name, marker)
            return record
        return _prepare(spec, data, target, marker, offline, extract_again)


def _marker_record(marker: Path) -> dict[str, Any] | None:
    """What a ready marker records; None if there is none, or none readable."""
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _prepare(spec: DatasetSpec, data: DataConfig, target: Path, marker: Path, offline: bool,
             extract_again: bool) -> dict[str, Any]:
    name, root = spec.name, data.root
    marker.unlink(missing_ok=True)  # ready again only once this run has checked everything
    _fetch_all(spec, root, target, offline, extract_again)
    # each split's json is written after its images, val's last: a killed run writes anew
    if name == "digit_scenes" and not (target / "val.json").is_file():
        from relvit.detection.data import write_scenes

        write_scenes(target, spec.image_size)
    try:
        splits = load_splits(spec, data, spec.image_size)
    except DatasetLayoutError as err:
        if spec.manual:
            why = "your own images" if name == "imagefolder" else "it needs an account"
            raise DatasetLayoutError(
                f"{err}\n{spec.title} cannot be downloaded automatically ({why}): put its files "
                f"under {target} as laid out above.") from err
        if not any(r.extract for r in spec.resources):
            raise
        # extracted files damaged or deleted since: the checked archives are still there
        log.warning("%s: %s\nextracting its archives again", name, err)
        _fetch_all(spec, root, target, offline, extract_again=True)
        splits = load_splits(spec, data, spec.image_size)
    record = {
        "dataset": name, "folder": str(target), "classes": len(splits.classes),
        "splits": {spec.train_split: len(splits.train.labels),
                   **{split: len(s.labels) for split, s in splits.evals.items()}},
        "resources": [{"file": r.filename, "md5": r.md5, "sha256": r.sha256}
                      for r in spec.resources],
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(json.dumps(record, indent=2) + "\n", marker)
    log.info("%s ready in %s: %s, %d classes (recorded in %s)", name, target,
             ", ".join(f"{split} {n:,} samples" for split, n in record["splits"].items()),
             record["classes"], marker)
    return record


def _fetch_all(spec: DatasetSpec, root: str | Path, target: Path, offline: bool,
               extract_again: bool = False) -> None:
    """Download and check `spec`'s files, archives first, unpacking them into `target` (anew
    if `extract_again`, else unless already unpacked from the same archive)."""
    subfolders = dict(spec.subfolders)
    for resource in sorted(spec.resources, key=lambda r: not r.extract):
        log.info("%s: %s", spec.name, resource.filename)
        downloads = Path(root) / ".downloads" / spec.name if resource.extract else target
        into = target / subfolders.get(resource.filename, "")
        fetch(resource, downloads, extract_to=into if resource.extract else None,
              offline=offline, extract_again=extract_again)
