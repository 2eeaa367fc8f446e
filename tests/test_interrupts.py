"""relvit.interrupts: SIGTERM stops a command as Ctrl-C does, in the block only; worker
processes ignore Ctrl-C (the end-to-end cases: tests/faults/test_kill_resume.py, the loaders'
in tests/test_datasets.py and tests/test_detection_train.py)."""

import os
import signal
import threading

import pytest

from relvit.interrupts import Terminated, ignore_interrupt, sigterm_as_interrupt


def test_sigterm_raises_terminated_in_the_block_only():
    """The handler goes back after the block: the CLI's main() runs inside test processes too."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated, match="SIGTERM"):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()  # not reached: the handler raises first
    assert signal.getsignal(signal.SIGTERM) is before
    assert issubclass(Terminated, KeyboardInterrupt)  # every interrupt path takes it


def test_a_worker_ignores_ctrl_c_and_dies_of_sigterm():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with sigterm_as_interrupt():  # as in a worker forked inside the CLI's block
            ignore_interrupt(0)  # as a DataLoader's worker_init_fn calls it, with the worker id
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
            os.kill(os.getpid(), signal.SIGINT)  # nothing happens
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


@pytest.mark.parametrize("rows, said", [
    (0, "{out} has no finished epoch yet: the same command starts the run again"),
    (1, "{out} keeps its 1 finished epoch (last.pt): the same command resumes after them"),
    (2, "{out} keeps its 2 finished epochs (last.pt): the same command resumes after them"),
])
def test_an_interrupted_run_says_how_many_epochs_it_keeps(tmp_path, rows, said):
    """Counted from history.csv's rows after its header; a command that is not a training run
    says what it keeps in general."""
    import argparse

    from relvit import cli

    out = tmp_path / "run"
    out.mkdir()
    (out / "history.csv").write_text("epoch,loss\n" + "".join(f"{i},0.5\n" for i in range(rows)))
    assert cli._what_is_kept(argparse.Namespace(func=cli._train, out=out)) == said.format(out=out)
    other = argparse.Namespace(func=cli._report_detection, out=out)
    assert cli._what_is_kept(other) == (
        "what was finished is kept: the same command goes on from there")


def test_outside_the_main_thread_the_block_runs_and_changes_no_handler():
    """The CLI's main() called from a thread (a notebook's, a scheduler's): signal.signal would
    raise ValueError there."""
    before, errors = signal.getsignal(signal.SIGTERM), []

    def body():
        try:
            with sigterm_as_interrupt():
                pass
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert errors == [] and signal.getsignal(signal.SIGTERM) is before
