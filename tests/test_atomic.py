"""relvit.atomic on its own: what an interrupted or failed write leaves, the mode of what it
writes, and which temporary files count as stale. (A real full disk: tests/faults/
test_full_disk.py.)"""

from __future__ import annotations

import os
import shutil

import pytest

from relvit.atomic import atomic_write, atomic_write_text, previous_path, remove_stale_temps


def _temps(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("*.tmp"))


def _interrupted(handle) -> None:
    handle.write("half")
    raise KeyboardInterrupt  # Ctrl-C, or SIGTERM's Terminated (a KeyboardInterrupt)


def _interrupted_while_handling_an_oserror(handle) -> None:
    handle.write("half")
    try:
        raise FileNotFoundError(2, "No such file or directory")
    except OSError:
        raise KeyboardInterrupt from None


@pytest.mark.parametrize("write", [_interrupted, _interrupted_while_handling_an_oserror])
def test_an_interrupted_write_stays_an_interrupt_and_leaves_the_old_file(tmp_path, write):
    """The old file stays and no temporary file is left; the interrupt is raised as it is (one
    that came while an OSError was handled had been reported as a failed write, and the CLI's
    interrupt handling was lost)."""
    target = tmp_path / "metrics.json"
    atomic_write_text("old\n", target)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write)
    assert target.read_text() == "old\n" and _temps(tmp_path) == []


def test_a_written_file_has_the_usual_mode_not_mkstemps_private_one(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_text("x\n", tmp_path / "table1.md")
    assert (tmp_path / "table1.md").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_copy_of_the_previous_file_leaves_no_temporary_file(tmp_path, monkeypatch):
    """No hard links here and no room for the copy of last.pt: the write fails naming its file,
    last.pt and last.prev.pt are as they were, and neither temporary file is left."""
    target = tmp_path / "last.pt"
    target.write_bytes(b"new")
    previous_path(target).write_bytes(b"old")

    def no_link(*args):
        raise OSError(1, "Operation not permitted")

    def no_room(src, dst, **kwargs):  # the copy had begun when the disk filled
        with open(dst, "wb") as handle:
            handle.write(b"ne")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(shutil, "copyfile", no_room)
    with pytest.raises(OSError, match=r"cannot write .*last\.pt \(No space left on device\)"):
        atomic_write(target, lambda handle: handle.write(b"newer"), binary=True,
                     keep_previous=True)
    assert target.read_bytes() == b"new" and previous_path(target).read_bytes() == b"old"
    assert _temps(tmp_path) == []


def test_stale_temporary_files_are_the_hidden_ones_a_write_makes(tmp_path):
    """The temporary file a killed write leaves is hidden and named after its target, and
    remove_stale_temps takes those only (a user's notes.tmp stays)."""
    during: list[str] = []
    atomic_write(tmp_path / "metrics.json",
                 lambda handle: during.extend(_temps(tmp_path)) or handle.write("{}"))
    assert len(during) == 1 and during[0].startswith(".metrics.json."), during
    (tmp_path / during[0]).write_text("left by a kill")
    (tmp_path / "notes.tmp").write_text("a user's")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [during[0]]
    assert _temps(tmp_path) == ["notes.tmp"]
