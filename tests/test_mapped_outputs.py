"""Memory-mapped outputs (NumPy, TIFF, MRC): tiles (a model's exact windows) are recorded in
groups, each group after one ``msync`` of the whole map, not each tile after its own
(:class:`densepred.io.run_record.DoneLog`, :meth:`densepred.io.OutputArray.defer_syncs`)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from densepred.io import run_record
from densepred.io.run_record import DoneLog
from tests.test_predict_files import predict


def test_lines_wait_for_a_commit_that_comes_a_second_after_the_last_and_precedes_them(tmp_path, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(run_record, "time", SimpleNamespace(monotonic=lambda: now[0]))
    log_file = tmp_path / "done.log"
    seen = []  # the log's lines at each commit
    with DoneLog(tmp_path, commit=lambda: seen.append(log_file.read_text().splitlines())) as log:
        now[0] = 0.5
        log.append(1)
        log.append(2)
        assert seen == []
        assert log_file.read_text() == ""
        now[0] = 1.2
        log.append(3)
        assert seen == [[]]  # one commit, before any of its lines
        assert [int(line.split()[0]) for line in log_file.read_text().splitlines()] == [1, 2, 3]
        now[0] = 1.5
        log.append(4)
    assert len(seen) == 2  # the last group at the end
    assert len(log_file.read_text().splitlines()) == 4


def failing_commit():
    raise OSError(5, "Input/output error")


def run_that_fails(log):
    log.append(5)
    raise ValueError("the run's own error")


def test_a_failing_last_commit_fails_a_finished_run_and_leaves_a_failed_runs_error_alone(tmp_path):
    with pytest.raises(ValueError, match="the run's own error"), DoneLog(tmp_path, commit=failing_commit) as log:
        run_that_fails(log)
    with pytest.raises(OSError, match="Input/output error"), DoneLog(tmp_path, commit=failing_commit) as log:
        log.append(6)  # finished: the lines must not go missing unnoticed
    assert (tmp_path / "done.log").read_text() == ""


@pytest.mark.parametrize("seconds", [0.0, 100.0])  # a commit for each tile's line; one for all of them
def test_an_own_nets_tiles_in_a_numpy_file_are_recorded_after_a_sync_of_the_map(config, tmp_path, monkeypatch,
                                                                                 seconds):
    np.save(tmp_path / "in.npy", np.random.default_rng(5).random((13, 47, 39), dtype=np.float32))
    events, lock = [], threading.Lock()

    def note(*event):
        with lock:
            events.append(event)

    flush, line, append = np.memmap.flush, run_record.done_line, DoneLog.append
    monkeypatch.setattr(np.memmap, "flush", lambda self: (flush(self), note("synced"))[0])
    monkeypatch.setattr(run_record, "done_line", lambda i: (note("recorded", i), line(i))[1])
    monkeypatch.setattr(DoneLog, "append", lambda self, i: (note("finished", i), append(self, i))[1])
    monkeypatch.setattr(run_record, "COMMIT_SECONDS", seconds)
    assert predict(config, tmp_path, str(tmp_path / "o.npy"), "--mirror") == 0

    finished = [e[1] for e in events if e[0] == "finished"]
    assert len(finished) > 4
    assert sorted(e[1] for e in events if e[0] == "recorded") == sorted(finished)
    for tile in finished:  # its writes have returned, then a sync of the whole map, then its line
        assert ("synced",) in events[events.index(("finished", tile)):events.index(("recorded", tile))]
    last_line = max(i for i, e in enumerate(events) if e[0] == "recorded")
    assert events[:last_line].count(("synced",)) == (1 if seconds else len(finished))
