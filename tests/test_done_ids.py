"""The pieces a run has done, read from ``done.log`` into one bit each (:mod:`densepred.io.done_ids`),
against the definitions: a Python set, and the line rule of :func:`~densepred.io.run_record.done_line`.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densepred.geometry import TilePlan
from densepred.io.done_ids import DoneIds
from densepred.io.run_record import done_line, read_done

ids = st.lists(st.one_of(st.integers(0, 70), st.integers(0, 5000)), max_size=300)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(added=ids, asked=ids)
def test_done_ids_answer_what_a_set_answers(added, asked):
    done, reference = DoneIds(added[: len(added) // 2]), set(added[: len(added) // 2])
    for piece_id in added[len(added) // 2:]:
        done.add(piece_id)
        reference.add(piece_id)
    done.update(np.array(added[:5], dtype=np.int64))  # NumPy integers too
    reference.update(added[:5])
    assert len(done) == len(reference)
    assert bool(done) == bool(reference)
    assert list(done) == sorted(reference)
    assert all(type(i) is int for i in done)
    assert [i in done for i in asked] == [i in reference for i in asked]
    assert done == reference
    assert reference == done
    assert -1 not in done
    assert "3" not in done
    at_once = DoneIds([7])
    at_once.add_all(np.array(added, dtype=np.int64))  # in bulk, as a log is read
    at_once.add_all(np.array(added[:3], dtype=np.uint32))
    assert at_once == reference | {7}
    assert len(at_once) == len(reference | {7})


def test_an_id_that_is_no_piece_number_is_refused_and_a_line_beyond_any_run_is_not_believed(tmp_path):
    done = DoneIds()
    for bad in (-1, 2.0, "3", None):
        with pytest.raises(ValueError, match="non-negative integer"):
            done.add(bad)
    for bad in (np.array([3, -1]), np.array([1.5])):
        with pytest.raises(ValueError, match="non-negative integers"):
            done.add_all(bad)
    (tmp_path / "done.log").write_text(done_line(2**32) + done_line(4) + done_line(10**15))  # by hand
    assert read_done(tmp_path) == {4}  # no bitmap of 125 TB


def lines_by_the_old_rule(text: str) -> set[int]:
    """The rule read_done keeps: a whole line, exactly ``done_line`` of its id."""
    found = set()
    for line in text.split("\n")[:-1]:
        parts = line.split(" ")
        if len(parts) == 2 and parts[0].isdigit() and done_line(int(parts[0])) == line + "\n":
            found.add(int(parts[0]))
    return found


@settings(max_examples=80, deadline=None, derandomize=True)
@given(pieces=st.lists(st.tuples(st.integers(0, 10**7), st.sampled_from(
    ["good", "torn", "zero", "upper", "space", "crc", "merged", "empty", "junk"])), max_size=40))
def test_read_done_believes_exactly_the_lines_the_line_rule_believes(tmp_path_factory, pieces):
    text = ""
    for piece_id, kind in pieces:
        line = done_line(piece_id)
        text += {"good": line, "torn": line[:-3] + "\n", "zero": "0" + line, "upper": line.upper(),
                 "space": line.replace(" ", "  "), "crc": f"{piece_id} {zlib.crc32(b'x'):08x}\n",
                 "merged": f"{piece_id}3 {zlib.crc32(b'3'):08x}\n", "empty": "\n", "junk": "\u00e9 \xff\n"}[kind]
    text += "17"  # torn off by a crash
    folder = tmp_path_factory.mktemp("record")
    (folder / "done.log").write_bytes(text.encode("utf-8"))
    assert read_done(folder) == lines_by_the_old_rule(text)


def test_a_resume_batches_the_same_tiles_from_done_ids_as_from_a_set():
    plan = TilePlan.create((23, 19, 31), (3, 3, 3), (4, 5, 6), mirror=True)
    rng = np.random.default_rng(3)
    for batch_size in (1, 3, 7):
        chosen = set(rng.choice(len(plan), size=len(plan) // 3, replace=False).tolist())
        assert list(plan.batches_to_run(DoneIds(chosen), batch_size)) == list(plan.batches_to_run(chosen, batch_size))


def test_the_mask_of_the_first_n_ids_is_membership():
    rng = np.random.default_rng(4)
    ids = DoneIds(int(i) for i in rng.choice(1000, 137, replace=False))
    for n in (0, 1, 7, 8, 9, 500, 999, 1000, 1013, 4000):
        assert ids.mask(n).tolist() == [i in ids for i in range(n)], n
