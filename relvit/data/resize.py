"""Pre-resized copies of an image-file dataset (`relvit resize-images`).

The copy keeps the folder layout and the file names, so a run reads it through `data.folder`
like the original; every image whose shorter side is larger than S is resized to a shorter side
of S (aspect kept, PIL's antialiased bilinear, torchvision's default), the rest and every other
file are copied byte for byte. Loader workers then decode fewer pixels: on ImageNet-size JPEGs
S = 256 nearly halves the time per image (docs/performance.md). The pixels a run sees differ
from the original's (an opt-in deviation, docs/deviations.md).

Each file is written atomically and an existing one is kept, so an interrupted copy resumes
where it stopped; `DST/.relvit-resize-settings.json` records the settings (a rerun with others is
refused), `DST/.relvit-resized.json` (the workflow's `resize_data` output) is written once the
copy is complete, with the counts.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from dataclasses import asdict, dataclass
from pathlib import Path

from relvit.atomic import TEMP_SUFFIX, atomic_write, atomic_write_text, remove_stale_temps
from relvit.data.formats import decode_image, is_image_file
from relvit.interrupts import ignore_interrupt
from relvit.locks import folder_lock, lock_beside

log = logging.getLogger("relvit")
MARKER = ".relvit-resized.json"  # written when the copy is complete
SETTINGS = ".relvit-resize-settings.json"  # written when it starts
PROGRESS_EVERY_S = 10.0


class ResizeError(ValueError):
    """A resize that cannot go on; the message names the file or setting."""


@dataclass(frozen=True)
class ResizeSettings:
    """What a resized copy is made with (recorded in its marker)."""

    shorter_side: int
    quality: int = 90  # JPEG quality of re-encoded JPEGs (FFCV's ImageNet choice)

    def __post_init__(self) -> None:
        if self.shorter_side < 1:
            raise ResizeError(f"--shorter-side must be a positive number of pixels, "
                              f"got {self.shorter_side}")
        if not 1 <= self.quality <= 95:
            raise ResizeError(f"--quality must be in 1..95 (PIL's JPEG range), got {self.quality}")


def resized_copy(folder: str | Path) -> ResizeSettings | None:
    """The settings the resized copy in `folder` was made with, or None when `folder` is not a
    resized copy; ResizeError when the copy is not complete (a run would read only part of the
    dataset) or its record cannot be read."""
    folder = Path(folder)
    if not (folder / SETTINGS).is_file():
        return None
    marker = folder / MARKER
    if not marker.is_file():
        raise ResizeError(f"{folder} is a resized copy that is not complete (no {MARKER}): "
                          f"run the same `relvit resize-images SRC {folder} ...` again to finish "
                          f"it (the workflow's resize_data rule does)")
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        return ResizeSettings(int(record["shorter_side"]), int(record["quality"]))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise ResizeError(f"{marker}: unreadable ({err}); delete it and run relvit "
                          f"resize-images again to check the copy and write it anew") from err


def resized_folder(root: str | Path, dataset: str, shorter_side: int) -> Path:
    """Where the workflow keeps the resized copy of `<root>/<dataset>` (config `data.resized`)."""
    return Path(root) / f"{dataset}-s{shorter_side}"


def resized_size(width: int, height: int, shorter_side: int) -> tuple[int, int] | None:
    """(width, height) with the shorter side `shorter_side`, the aspect kept; None when the
    image is no larger than that already."""
    short = min(width, height)
    if short <= shorter_side:
        return None
    scale = shorter_side / short
    return (shorter_side if width == short else max(1, round(width * scale)),
            shorter_side if height == short else max(1, round(height * scale)))


def resize_file(src: Path, dst: Path, settings: ResizeSettings) -> tuple[str, int, int]:
    """Write `dst` from `src`; returns (what was done: "resized" | "copied", bytes of src, of dst)."""
    from PIL import Image

    size = None
    if is_image_file(src):  # as the readers see it: hidden files are copied, as other files
        try:
            with Image.open(src) as image:
                fmt, size = image.format, resized_size(*image.size, settings.shorter_side)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ResizeError(f"{src}: not a readable image ({err})") from err
    if size is None:  # small enough, or not an image: as it is
        atomic_write(dst, lambda out: _copy_bytes(src, out), binary=True)
        return "copied", src.stat().st_size, dst.stat().st_size
    try:
        image = decode_image(src).resize(size, Image.BILINEAR)  # RGB, as the loader reads it
    except ValueError as err:  # decode_image names the file
        raise ResizeError(str(err)) from err
    # the source's format: lossless ones stay lossless; JPEG's variants (MPO) are JPEG
    fmt = fmt if fmt in ("PNG", "BMP", "TIFF", "PPM", "WEBP") else "JPEG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": settings.quality} if fmt in ("JPEG", "WEBP")
                                      else {}))
    atomic_write(dst, lambda out: out.write(buffer.getvalue()), binary=True)
    return "resized", src.stat().st_size, len(buffer.getvalue())


def _copy_bytes(src: Path, out) -> None:
    with open(src, "rb") as handle:
        shutil.copyfileobj(handle, out)


def _resize_one(job: tuple[Path, Path, ResizeSettings]) -> tuple[str, int, int]:
    return resize_file(*job)


def _source_files(src: Path) -> list[Path]:
    """Every file under `src` but relvit's markers and interrupted writes, sorted; symlinked
    folders are followed, as the dataset readers follow them (a folder linking back to one it
    is in is not entered again)."""
    files = []
    for folder, subfolders, names in os.walk(src, followlinks=True):
        here = Path(folder)
        above = {os.path.realpath(p) for p in (here, *here.parents)}
        subfolders[:] = [d for d in subfolders if os.path.realpath(here / d) not in above]
        files += [(here / name).relative_to(src) for name in names
                  if (here / name).is_file() and not name.startswith(".relvit-")
                  and not name.endswith(TEMP_SUFFIX)]
    return sorted(files)


def _check_folders(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise ResizeError(f"{src}: no such folder (the dataset to resize)")
    a, b = src.resolve(), dst.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise ResizeError(f"{dst} and {src} overlap: write the resized copy beside the dataset, "
                          f"e.g. {src.parent / (src.name + '-s256')}")


def _claim(dst: Path, src: Path, settings: ResizeSettings) -> None:
    """Record the settings in DST; refuse a DST made with other settings, or not by this tool."""
    marker = dst / SETTINGS
    if not marker.is_file() and dst.is_dir() and any(dst.iterdir()):
        raise ResizeError(f"{dst} is not empty and holds no {SETTINGS}: not a resized copy; "
                          f"choose a new or empty destination")
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
            previous = ResizeSettings(recorded["shorter_side"], recorded["quality"])
        except (ValueError, KeyError, TypeError) as err:
            raise ResizeError(f"{marker}: unreadable ({err}); delete {dst} to start over") from err
        if previous != settings:
            raise ResizeError(
                f"{marker}: {dst} holds copies made with shorter side {previous.shorter_side}, "
                f"quality {previous.quality}, not {settings.shorter_side}, {settings.quality}: "
                f"use another destination or delete {dst}")
        source = recorded.get("source")
        # another folder's copies (a source moved since, gone from where it was, is this one)
        if source and source != str(src.resolve()) and Path(source).is_dir():
            raise ResizeError(f"{marker}: {dst} holds copies of {source}, not of {src}: use "
                              f"another destination or delete {dst}")
    dst.mkdir(parents=True, exist_ok=True)
    (dst / MARKER).unlink(missing_ok=True)  # complete again only once this run is
    atomic_write_text(json.dumps({"source": str(src.resolve()), **asdict(settings)}, indent=2)
                      + "\n", marker)


def _progress(done: int, total: int, started: float) -> str:
    rate = done / max(time.perf_counter() - started, 1e-9)
    left = (total - done) / rate if rate > 0 else float("inf")
    return (f"resize: {done:,}/{total:,} files ({100 * done / max(total, 1):.1f} %), "
            f"{rate:,.0f} files/s, about {left:,.0f} s left")


def resize_tree(src: str | Path, dst: str | Path, settings: ResizeSettings,
                workers: int | None = None) -> dict[str, object]:
    """Make (or finish) the resized copy of folder `src` in `dst`; returns the counts that the
    marker records. `workers`: processes (default: every core; 0: this process)."""
    src, dst = Path(src), Path(dst)
    _check_folders(src, dst)
    with folder_lock(lock_beside(dst, "resize"), dst, "resizing images into"):
        return _resize_tree(src, dst, settings, workers)


def _resize_tree(src: Path, dst: Path, settings: ResizeSettings,
                 workers: int | None) -> dict[str, object]:
    _claim(dst, src, settings)
    for folder in [dst, *(p for p in dst.rglob("*") if p.is_dir())]:
        remove_stale_temps(folder)
    files = _source_files(src)
    todo = [rel for rel in files if not (dst / rel).is_file()]
    counts = {"files": len(files), "kept": len(files) - len(todo), "resized": 0, "copied": 0,
              "bytes_before": 0, "bytes_after": 0}
    log.info("resize: %s -> %s, shorter side %d, quality %d: %d files, %d already there",
             src, dst, settings.shorter_side, settings.quality, len(files), counts["kept"])
    started, shown = time.perf_counter(), time.perf_counter()
    jobs = [(src / rel, dst / rel, settings) for rel in todo]
    try:
        for i, (done, before, after) in enumerate(_run(jobs, workers), 1):
            counts[done] += 1
            counts["bytes_before"] += before
            counts["bytes_after"] += after
            if time.perf_counter() - shown >= PROGRESS_EVERY_S or i == len(jobs):
                shown = time.perf_counter()
                log.info(_progress(i, len(jobs), started))
    except ResizeError as err:
        raise ResizeError(f"{err}; the files already in {dst} ({_in_copy(files, dst)}) are "
                          f"kept: fix or remove that file and run again to go on") from err
    except KeyboardInterrupt:
        log.warning("resize: interrupted; the files already in %s (%s) are kept: run "
                    "the same command again to go on", dst, _in_copy(files, dst))
        raise
    record = {"source": str(src.resolve()), **asdict(settings), **counts,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(json.dumps(record, indent=2) + "\n", dst / MARKER)
    log.info("resize: done, %d resized, %d copied, %d kept; %.1f -> %.1f MB written",
             counts["resized"], counts["copied"], counts["kept"], counts["bytes_before"] / 1e6,
             counts["bytes_after"] / 1e6)
    return record


def _in_copy(files: list[Path], dst: Path) -> str:
    """How many of the source's files the copy holds, counted on disk ("4 of 6"): worker
    processes may have written more than the results received so far."""
    return f"{sum((dst / rel).is_file() for rel in files):,} of {len(files):,}"


def _run(jobs: list[tuple[Path, Path, ResizeSettings]],
         workers: int | None) -> Iterator[tuple[str, int, int]]:
    """The jobs' results, in order; in `workers` processes (0: here)."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers == 0 or len(jobs) < 2:
        yield from map(_resize_one, jobs)
        return
    # workers started from a fresh process: forked, they would share the folder's lock, and
    # outlive a killed resize holding it (waiting on their queue forever)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("forkserver"),
                             initializer=ignore_interrupt) as pool:
        try:
            yield from pool.map(_resize_one, jobs, chunksize=max(1, min(64, len(jobs) // (
                4 * workers))))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
