"""`relvit resize-images`: a pre-resized copy of an image-file dataset, in the real layouts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures.formats import write_imagenet100
from relvit.cli import main
from relvit.data.formats import read_imagenet100
from relvit.data.resize import (
    MARKER, SETTINGS, ResizeError, ResizeSettings, resize_tree, resized_copy, resized_size,
)


def _image(path: Path, width: int, height: int, fmt: str = "JPEG", mode: str = "RGB",
           seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    """A folder of every kind of file a dataset holds."""
    src = tmp_path / "src"
    _image(src / "a" / "wide.jpg", 40, 30)
    _image(src / "a" / "tall.JPEG", 21, 50, seed=1)
    _image(src / "a" / "gray.jpg", 30, 30, mode="L", seed=2)
    _image(src / "b" / "small.png", 12, 9, fmt="PNG", seed=3)
    _image(src / "b" / "png_named.JPEG", 32, 24, fmt="PNG", seed=4)  # as one of ImageNet's
    (src / "labels.json").write_text('{"a": 0, "b": 1}\n')
    (src / "a" / "._wide.jpg").write_bytes(b"AppleDouble")  # hidden: no image to the readers
    return src


def _relative_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name not in (MARKER, SETTINGS))


def test_resized_size_keeps_the_aspect():
    assert resized_size(500, 375, 256) == (341, 256)
    assert resized_size(375, 500, 256) == (256, 341)
    assert resized_size(300, 300, 256) == (256, 256)
    assert resized_size(256, 400, 256) is None and resized_size(100, 90, 256) is None
    assert resized_size(500, 300, 256) == (427, 256)  # 426.67 rounded, not cut


def test_resize_settings_bounds():
    """A shorter side of 0 is refused; quality 95, PIL's top, is taken and 96 refused."""
    with pytest.raises(ResizeError, match="--shorter-side"):
        ResizeSettings(0)
    assert ResizeSettings(16, quality=95).quality == 95
    with pytest.raises(ResizeError, match="--quality"):
        ResizeSettings(16, quality=96)


def test_every_image_keeps_its_format_and_jpegs_take_the_quality(tmp_path):
    """A WEBP, TIFF, PPM or PGM source is written in its own format (they had become JPEG
    bytes under their names), and `quality` reaches the JPEG encoder."""
    src = tmp_path / "src"
    formats = {"x.webp": "WEBP", "x.tif": "TIFF", "x.ppm": "PPM", "x.pgm": "PPM"}
    for name, fmt in formats.items():
        _image(src / "a" / name, 40, 30, fmt=fmt, mode="L" if name.endswith(".pgm") else "RGB")
    _image(src / "a" / "y.jpg", 40, 30)
    sizes = {}
    for quality in (20, 90):
        resize_tree(src, tmp_path / f"q{quality}", ResizeSettings(16, quality=quality),
                    workers=0)
        sizes[quality] = (tmp_path / f"q{quality}" / "a" / "y.jpg").stat().st_size
        for name, fmt in formats.items():
            with Image.open(tmp_path / f"q{quality}" / "a" / name) as image:
                assert (image.format, image.size) == (fmt, (21, 16)), name
    assert sizes[20] < sizes[90]


def test_copy_shrinks_large_images_and_copies_the_rest(tree, tmp_path):
    dst = tmp_path / "dst"
    record = resize_tree(tree, dst, ResizeSettings(16), workers=0)
    assert _relative_files(dst) == _relative_files(tree)
    sizes = {name: Image.open(dst / name).size for name in _relative_files(dst)
             if name not in ("labels.json", "a/._wide.jpg")}
    assert sizes == {"a/wide.jpg": (21, 16), "a/tall.JPEG": (16, 38), "a/gray.jpg": (16, 16),
                     "b/small.png": (12, 9), "b/png_named.JPEG": (21, 16)}
    for name in ("b/small.png", "labels.json", "a/._wide.jpg"):  # small, or no image: as is
        assert (dst / name).read_bytes() == (tree / name).read_bytes()
    assert Image.open(dst / "b/png_named.JPEG").format == "PNG"  # the source's format
    bilinear = Image.open(tree / "b/png_named.JPEG").resize((21, 16), Image.BILINEAR)
    assert np.array_equal(np.asarray(Image.open(dst / "b/png_named.JPEG")), np.asarray(bilinear))
    assert Image.open(dst / "a/gray.jpg").mode == "RGB"  # as the loader reads it
    marker = json.loads((dst / MARKER).read_text())
    assert marker["shorter_side"] == 16 and marker["quality"] == 90 and marker["files"] == 7
    assert (record["resized"], record["copied"], record["kept"]) == (4, 3, 0)


def test_the_copy_reads_as_the_dataset(tmp_path):
    src, dst = tmp_path / "imagenet100", tmp_path / "imagenet100-s4"
    write_imagenet100(src)  # 8 x 8 images
    resize_tree(src, dst, ResizeSettings(4), workers=0)
    for split in ("train", "val"):
        ours, theirs = read_imagenet100(dst, split), read_imagenet100(src, split)
        assert ours.classes == theirs.classes
        assert list(ours.labels) == list(theirs.labels)
        assert [p.relative_to(dst) for p in ours.paths] == [p.relative_to(src)
                                                           for p in theirs.paths]
        assert all(Image.open(p).size == (4, 4) for p in ours.paths)


def test_symlinked_class_folders_are_copied_as_the_readers_see_them(tmp_path):
    """The readers follow a symlinked folder; the copy had skipped it and was marked complete."""
    src, dst = tmp_path / "imagenet100", tmp_path / "imagenet100-s4"
    write_imagenet100(src)
    val = src / "val.X"
    elsewhere = tmp_path / "elsewhere"
    linked = sorted(p for p in val.iterdir() if p.is_dir())[0]
    linked.rename(elsewhere)
    linked.symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(val, target_is_directory=True)  # a cycle is not followed
    resize_tree(src, dst, ResizeSettings(4), workers=0)
    ours, theirs = read_imagenet100(dst, "val"), read_imagenet100(src, "val")
    assert list(ours.labels) == list(theirs.labels) and len(set(ours.labels)) > 1
    assert [p.relative_to(dst) for p in ours.paths] == [p.relative_to(src) for p in theirs.paths]
    assert not (dst / "val.X" / linked.name / "loop").exists()


def test_relvits_own_and_half_written_files_of_the_source_are_not_copied(tree, tmp_path):
    """The source's ready marker (`.relvit-*`) and a temporary file an interrupted write left
    in it are no dataset files."""
    (tree / ".relvit-ready.json").write_text("{}")
    (tree / "a" / ".wide.jpg.x1y2.tmp").write_bytes(b"partial")
    dst = tmp_path / "dst"
    assert resize_tree(tree, dst, ResizeSettings(16), workers=0)["files"] == 7
    assert not (dst / ".relvit-ready.json").exists()
    assert not (dst / "a" / ".wide.jpg.x1y2.tmp").exists()


def test_a_copy_killed_mid_file_leaves_no_part_of_it(tree, tmp_path, monkeypatch):
    """A file cut short by a kill is not left under its name, where the next run would keep it
    as finished."""
    def cut(fsrc, fdst, *args, **kwargs):
        fdst.write(fsrc.read()[:3])
        raise KeyboardInterrupt

    def cut_file(src, dst, **kwargs):
        with open(src, "rb") as fsrc, open(dst, "wb") as fdst:
            cut(fsrc, fdst)

    dst = tmp_path / "dst"
    with monkeypatch.context() as patched:
        patched.setattr(shutil, "copyfileobj", cut)
        patched.setattr(shutil, "copyfile", cut_file)
        with pytest.raises(KeyboardInterrupt):
            resize_tree(tree, dst, ResizeSettings(16), workers=0)
    for name in _relative_files(dst):  # no file holds the start of its source only
        whole, held = (tree / name).read_bytes(), (dst / name).read_bytes()
        assert not (len(held) < len(whole) and whole.startswith(held)), name
    resize_tree(tree, dst, ResizeSettings(16), workers=0)
    assert (dst / "labels.json").read_bytes() == (tree / "labels.json").read_bytes()


def test_an_interrupted_copy_resumes(tree, tmp_path):
    dst = tmp_path / "dst"
    resize_tree(tree, dst, ResizeSettings(16), workers=0)
    stamps = {name: os.stat(dst / name).st_mtime_ns for name in _relative_files(dst)}
    (dst / "a" / "tall.JPEG").unlink()  # not written yet when the copy was killed
    stale = dst / "a" / ".tall.JPEG.x1y2.tmp"  # what a killed atomic write leaves
    stale.write_bytes(b"partial")
    record = resize_tree(tree, dst, ResizeSettings(16), workers=0)
    assert (record["kept"], record["resized"], record["copied"]) == (6, 1, 0)
    assert not stale.exists()
    for name, stamp in stamps.items():
        if name != "a/tall.JPEG":
            assert os.stat(dst / name).st_mtime_ns == stamp, name


def test_a_second_copy_into_the_same_folder_waits_for_the_first(tree, tmp_path, caplog):
    """Two copies at once into one folder had removed each other's temporary files as left by
    an interrupted write, and failed or written the work twice."""
    import threading

    from relvit.locks import folder_lock, lock_beside

    dst, done = tmp_path / "dst", []
    second = threading.Thread(
        target=lambda: done.append(resize_tree(tree, dst, ResizeSettings(16), workers=0)))
    with caplog.at_level("WARNING", logger="relvit"):
        with folder_lock(lock_beside(dst, "resize"), dst, "resizing images into"):
            second.start()
            second.join(1.0)
            assert second.is_alive() and not done and not dst.exists()
        second.join(60)
    assert done[0]["resized"] + done[0]["copied"] == 7
    assert f"waiting for pid {os.getpid()} on " in caplog.text
    assert f"which is resizing images into {dst}" in caplog.text


def test_a_copy_made_with_other_settings_is_refused(tree, tmp_path):
    dst = tmp_path / "dst"
    resize_tree(tree, dst, ResizeSettings(16), workers=0)
    with pytest.raises(ResizeError, match=r"shorter side 16, quality 90, not 20, 90"):
        resize_tree(tree, dst, ResizeSettings(20), workers=0)
    with pytest.raises(ResizeError, match=r"shorter side 16, quality 90, not 16, 50"):
        resize_tree(tree, dst, ResizeSettings(16, quality=50), workers=0)


def test_a_completion_marker_without_a_setting_is_unreadable(tree, tmp_path):
    """A marker that lacks the quality is refused as unreadable, not read with a default."""
    dst = tmp_path / "dst"
    resize_tree(tree, dst, ResizeSettings(16), workers=0)
    (dst / MARKER).write_text(json.dumps({"shorter_side": 16}))
    with pytest.raises(ResizeError, match="unreadable"):
        resized_copy(dst)


def test_a_failed_refresh_of_a_complete_copy_unmarks_it(tree, tmp_path):
    """A complete copy run again, over a source with a new, broken image: the copy is no
    longer marked complete (it had kept its marker, so training would take it)."""
    dst = tmp_path / "dst"
    resize_tree(tree, dst, ResizeSettings(16), workers=0)
    _image(tree / "c" / "big.jpg", 40, 30).write_bytes(b"\xff\xd8 not a JPEG")
    with pytest.raises(ResizeError, match="big.jpg"):
        resize_tree(tree, dst, ResizeSettings(16), workers=0)
    with pytest.raises(ResizeError, match="not complete"):
        resized_copy(dst)


def test_a_copy_of_another_folder_is_refused_and_a_moved_source_is_its_own(tree, tmp_path):
    """A copy of folder A, refreshed from folder B with the same settings, had been marked
    complete holding A's pixels."""
    dst = tmp_path / "dst"
    resize_tree(tree, dst, ResizeSettings(16), workers=0)
    other = tmp_path / "other"
    _image(other / "a" / "wide.jpg", 40, 30, seed=9)
    with pytest.raises(ResizeError, match=f"holds copies of {tree}, not of {other}"):
        resize_tree(other, dst, ResizeSettings(16), workers=0)
    moved = tree.rename(tmp_path / "moved")  # data moved: the same files elsewhere
    resize_tree(moved, dst, ResizeSettings(16), workers=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_is_named_and_finished_files_are_kept(tree, tmp_path, workers):
    (tree / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    dst = tmp_path / "dst"
    with pytest.raises(ResizeError, match=r"b/broken\.jpg.*files already in .* are kept"):
        resize_tree(tree, dst, ResizeSettings(16), workers=workers)
    assert (dst / "a" / "wide.jpg").is_file()  # sorted before it: done and kept
    assert not (dst / MARKER).exists()  # not complete
    assert json.loads((dst / SETTINGS).read_text())["shorter_side"] == 16


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the tree's others
def test_an_image_too_large_to_be_real_is_named(tree, tmp_path, monkeypatch):
    """PIL's DecompressionBombError is no OSError: the copy had stopped with a bare traceback."""
    _image(tree / "b" / "huge.png", 64, 64, fmt="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # an error above twice this
    with pytest.raises(ResizeError, match=r"b/huge\.png: not a readable image .*exceeds"):
        resize_tree(tree, tmp_path / "dst", ResizeSettings(16), workers=0)


def test_worker_processes_write_the_same_bytes(tree, tmp_path):
    resize_tree(tree, tmp_path / "here", ResizeSettings(16), workers=0)
    resize_tree(tree, tmp_path / "pool", ResizeSettings(16), workers=2)
    for name in _relative_files(tree):
        assert (tmp_path / "pool" / name).read_bytes() == (tmp_path / "here" / name).read_bytes()


def test_destinations_that_are_no_resized_copy_are_refused(tree, tmp_path):
    for inside in (tree / "copy", tmp_path):  # within the source, or holding it
        with pytest.raises(ResizeError, match="overlap"):
            resize_tree(tree, inside, ResizeSettings(16), workers=0)
    empty = tmp_path / "empty"  # "a new or empty destination"
    empty.mkdir()
    assert resize_tree(tree, empty, ResizeSettings(16), workers=0)["files"] == 7
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ResizeError, match="not empty and holds no"):
        resize_tree(tree, other, ResizeSettings(16), workers=0)
    with pytest.raises(ResizeError, match="no such folder"):
        resize_tree(tmp_path / "missing", tmp_path / "x", ResizeSettings(16), workers=0)


def test_command_line(tree, tmp_path, capsys):
    dst = tmp_path / "dst"
    assert main(["resize-images", str(tree), str(dst), "--shorter-side", "16",
                 "--workers", "0"]) == 0
    assert Image.open(dst / "a" / "wide.jpg").size == (21, 16)
    assert resized_copy(dst) == ResizeSettings(16)  # the quality default is the dataclass's
    with pytest.raises(SystemExit):
        main(["resize-images", "--help"])
    assert f"(default {ResizeSettings.quality}," in " ".join(capsys.readouterr().out.split())
    assert main(["resize-images", str(tree), str(tmp_path / "q"), "--shorter-side", "16",
                 "--quality", "100"]) == 1
    assert "--quality must be in 1..95" in capsys.readouterr().err


def test_an_interrupted_copy_keeps_its_files_and_says_so(tree, tmp_path, monkeypatch, caplog,
                                                         capsys):
    """Ctrl-C: the files written so far stay, the log says how to go on, the command exits 130
    without a traceback; the same command then finishes the copy."""
    import relvit.data.resize as resize

    original, calls = resize.resize_file, []

    def interrupted(src, dst, settings):
        calls.append(src)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(src, dst, settings)

    monkeypatch.setattr(resize, "resize_file", interrupted)
    dst = tmp_path / "dst"
    argv = ["resize-images", str(tree), str(dst), "--shorter-side", "16", "--workers", "0"]
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().endswith(
        "relvit: interrupted; what was finished is kept: the same command goes on from there")
    assert "interrupted; the files already in" in caplog.text and "(2 of 7)" in caplog.text
    assert len(_relative_files(dst)) == 2 and not (dst / MARKER).exists()
    monkeypatch.setattr(resize, "resize_file", original)
    assert main(argv) == 0
    assert _relative_files(dst) == _relative_files(tree)


def test_an_interrupted_copy_counts_the_files_the_workers_wrote(tree, tmp_path, monkeypatch,
                                                                caplog):
    """With worker processes, files are written before their results reach the command: the
    message counts what is on disk (it had said "at least 0" after 256 were written)."""
    import relvit.data.resize as resize

    def workers_wrote_three(jobs, workers):
        for src, dst, settings in jobs[:3]:
            resize.resize_file(src, dst, settings)
        raise KeyboardInterrupt
        yield  # a generator, as `_run`

    monkeypatch.setattr(resize, "_run", workers_wrote_three)
    with pytest.raises(KeyboardInterrupt), caplog.at_level("WARNING", logger="relvit"):
        resize_tree(tree, tmp_path / "dst", ResizeSettings(16), workers=2)
    assert "(3 of 7) are kept" in caplog.text  # 6 images and labels.json


def test_a_run_on_a_resized_copy_records_it_and_table1_marks_its_cell(tmp_path, tiny_config):
    """A run on a `data.resized` copy reads other pixels than the paper's: metrics.json records
    the copy's settings, Table 1 marks the cell `[resized S]` with a note, compare says so."""
    from fixtures.formats import write_imagefolder
    from relvit.report.compare import compare, to_csv
    from relvit.report.table1 import RESIZED_NOTE, write_table1
    from relvit.train.loop import train

    write_imagefolder(tmp_path / "images")
    resize_tree(tmp_path / "images", tmp_path / "images-s6", ResizeSettings(6), workers=0)
    # a copy under data.root (<root>/imagefolder) is recorded too, not only one in data.folder
    resize_tree(tmp_path / "images", tmp_path / "root" / "imagefolder", ResizeSettings(6),
                workers=0)
    runs = {}
    for name, where in (("own", {"folder": str(tmp_path / "images")}),
                        ("copy", {"folder": str(tmp_path / "images-s6")}),
                        ("root", {"root": str(tmp_path / "root")})):
        cfg = tiny_config("supervised", data={"name": "imagefolder", "image_size": 32,
                                              "workers": 0, **where},
                          model={"patch_size": 8}, optim={"epochs": 1, "batch_size": 4})
        runs[name] = train(cfg, tmp_path / name, progress=False)
    assert runs["own"]["data_copy"] is None
    assert runs["copy"]["data_copy"] == runs["root"]["data_copy"] == {"shorter_side": 6,
                                                                      "quality": 90}
    write_table1([tmp_path / "copy"], tmp_path / "table1", "test")
    table = (tmp_path / "table1.md").read_text()
    assert "(n=1) [resized 6]" in table and RESIZED_NOTE in table
    assert "[resized 6]" in (tmp_path / "table1.tex").read_text()
    write_table1([tmp_path / "own"], tmp_path / "plain", "test")
    assert "resized" not in (tmp_path / "plain.md").read_text()
    cells = compare([tmp_path / "copy"])
    assert [c.provenance["resized"] for c in cells] == ["6"]
    assert to_csv(cells).splitlines()[1].endswith(",6")


def test_an_incomplete_copy_is_refused_before_training(tmp_path):
    """A copy whose resize was stopped holds part of the dataset: reading it (by hand, outside
    the workflow's resize_data rule) trained on fewer images without a word."""
    from relvit.config import DataConfig
    from relvit.data.loading import load_splits
    from relvit.data.registry import get_dataset

    from fixtures.formats import write_imagefolder

    src, dst = tmp_path / "images", tmp_path / "images-s4"
    write_imagefolder(src)
    resize_tree(src, dst, ResizeSettings(4), workers=0)
    assert resized_copy(dst) == ResizeSettings(4) and resized_copy(src) is None
    spec, data = get_dataset("imagefolder"), DataConfig(name="imagefolder", folder=str(dst))
    assert load_splits(spec, data, 4).train.labels.numel() > 0
    (dst / MARKER).unlink()  # as the copy is until it finishes
    with pytest.raises(ResizeError, match=f"{dst} is a resized copy that is not complete"):
        load_splits(spec, data, 4)
    (dst / MARKER).write_text("{")
    with pytest.raises(ResizeError, match="unreadable"):
        resized_copy(dst)


def test_the_copys_worker_processes_do_not_hold_its_lock(tmp_path):
    """Forked from the process holding the folder's lock, the pool's workers shared it, and a
    resize killed (OOM, SIGKILL) left them waiting on their queue forever: the lock stayed
    held, and the next resize into the folder waited for a dead pid."""
    import signal
    import subprocess
    import sys
    import time

    from relvit.locks import lock_beside

    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(2000):  # a few seconds of work for the pool
        _image(src / "a" / f"{i}.jpg", 48, 40, seed=i)
    lock = str(lock_beside(dst, "resize"))
    resize = subprocess.Popen([sys.executable, "-m", "relvit.cli", "resize-images", str(src),
                               str(dst), "--shorter-side", "16", "--workers", "2"],
                              start_new_session=True, stderr=subprocess.DEVNULL)
    holders: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while resize.poll() is None and time.monotonic() < deadline:
            group = [int(p) for p in os.listdir("/proc") if p.isdigit() and _group_of(p) ==
                     resize.pid]
            holders = {pid for pid in group if _holds(pid, lock)}
            if len(group) > 2 and holders and any(p.suffix == ".jpg" for p in dst.rglob("*")):
                break  # the pool is at work
            time.sleep(0.05)
        assert resize.poll() is None, "the copy ended before its workers were seen"
        assert holders == {resize.pid}
    finally:
        os.killpg(resize.pid, signal.SIGKILL)
        resize.wait()


def _group_of(pid: str) -> int | None:
    try:
        return os.getpgid(int(pid))
    except OSError:
        return None


def _holds(pid: int, path: str) -> bool:
    """Whether process `pid` has file `path` open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                return True
        except OSError:
            pass
    return False
