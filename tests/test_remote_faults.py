"""Servers as they fail: a busy object store (503 Slow Down), one that answers 403 for a key
that is not there (S3 where listing is not allowed), one that asks for credentials; and public
buckets named as users copy them (``s3://``, ``gs://``, neuroglancer's sources)."""

from __future__ import annotations

import io
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zarr

from densepred.interfaces.cli import main
from densepred.io import ArraySpec, locations, open_array
from densepred.io.arrays import input_placement
from tests.conftest import make_config
from tests.test_reliability_files import one_error_line
from tests.test_remote_inputs import Ranged, serve, stores, two_channels


@pytest.fixture(autouse=True)
def short_waits(monkeypatch):
    monkeypatch.setattr(locations, "FIRST_WAIT", 0.005)


def first_request(handler):
    """Whether this is the server's first request for the handler's file (``server.seen``)."""
    with handler.server.lock:
        first = handler.path not in handler.server.seen
        handler.server.seen.add(handler.path)
    return first


def with_state(server, **state):
    """``server`` with a lock and the counters its handler keeps."""
    server.lock = threading.Lock()
    for name, value in state.items():
        setattr(server, name, value)
    return server


class Busy(Ranged):
    """Answers the first request for each file with 503 Slow Down (S3's answer when it is busy),
    and each request for a file in ``failing`` always so; later ones as :class:`Ranged`."""

    failing = ()

    def send_head(self):
        if first_request(self) or any(part in self.path for part in self.failing):
            self.send_error(503, "Slow Down")
            return None
        return super().send_head()


class Stalled(Ranged):
    """Leaves each request for a chunk unanswered for 0.4 s (all of them, or the first of each)."""

    always = True

    def send_head(self):
        if "/c/" in self.path and (first_request(self) or self.always):
            time.sleep(0.4)
        return super().send_head()


class Private(Ranged):
    """Answers 403 where a file is not there, as S3 does where listing is not allowed."""

    def send_error(self, code, message=None, explain=None):
        super().send_error(403 if code == 404 else code, message, explain)


class Credentials(Ranged):
    def send_head(self):
        self.send_error(401, "Unauthorized")


class Counted(Ranged):
    def send_head(self):
        with self.server.lock:
            self.server.asked.append(self.path)
        return super().send_head()


class Slow(Ranged):
    """Answers each request after 0.05 s, counting the requests in flight at once."""

    def send_head(self):
        with self.server.lock:
            self.server.flying += 1
            self.server.most = max(self.server.most, self.server.flying)
        time.sleep(0.05)
        with self.server.lock:
            self.server.flying -= 1
        return super().send_head()


def busy_server(folder, failing=()):
    server, url = serve(folder, type("Failing", (Busy,), {"failing": failing}))
    return with_state(server, seen=set()), url


@pytest.fixture
def web(tmp_path):
    from tests.test_precomputed_inputs import DATA

    stores(tmp_path / "web", two_channels())
    shutil.copytree(DATA / "sharded-jpeg", tmp_path / "web" / "sharded-jpeg")
    shutil.copytree(DATA / "unsharded-png", tmp_path / "web" / "sparse-png")
    (tmp_path / "web" / "sparse-png" / "1_1_1" / "0-8_8-13_4-7").unlink()  # a chunk never written: zeros
    return tmp_path / "web"


FORMS = ("v.zarr", "g.zarr:raw", "em.zarr/recon-1/em/s0", "precomputed://sharded-jpeg", "precomputed://sparse-png")


def remote(url, form):
    return f"precomputed://{url}/{form.removeprefix('precomputed://')}" if "://" in form else f"{url}/{form}"


def local(web, form):
    return str(web / form.removeprefix("precomputed://"))


def assert_reads_as_on_disk(url, web):
    for form in FORMS:
        there, here = ArraySpec.parse(remote(url, form)), ArraySpec.parse(local(web, form))
        np.testing.assert_array_equal(np.asarray(open_array(there)), np.asarray(open_array(here)))
        assert input_placement(there) == input_placement(here)


def test_a_busy_server_is_asked_again_and_gives_the_volume_on_disk(web):
    server, url = busy_server(web)
    try:
        assert_reads_as_on_disk(url, web)
        assert len(server.seen) > 20
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def impatient(monkeypatch):
    monkeypatch.setattr(locations, "SILENT_SECONDS", 0.15)
    locations.http_files.cache_clear()  # its file systems hold the timeouts they were made with
    yield
    locations.http_files.cache_clear()


def test_a_connection_silent_past_the_timeout_is_tried_again_then_one_line(tmp_path, web, impatient, capsys):
    config = make_config(tmp_path)
    for always, code in ((False, 0), (True, 2)):
        server, url = serve(web, type("Stalling", (Stalled,), {"always": always}))
        with_state(server, seen=set())
        server.handle_error = lambda *args: None  # the connection it answers late was closed: not the test's news
        try:
            output = str(tmp_path / f"{always}.zarr")
            assert main(["predict", str(config), "--input", f"{url}/v.zarr", "--output", output, "--quiet"]) == code
        finally:
            server.shutdown()
            server.server_close()
    assert main(["predict", str(config), "--input", str(web / "v.zarr"), "--output", str(tmp_path / "disk.zarr"),
                 "--quiet"]) == 0
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "False.zarr" / "0")[:],
                                  zarr.open_array(tmp_path / "disk.zarr" / "0")[:])
    err = capsys.readouterr().err
    assert "TimeoutError: Timeout on reading data from socket, 5 times: the server is busy or the connection" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "True.zarr").exists()


def test_a_server_that_answers_403_for_files_not_there_reads_as_the_folder(web):
    """zarr looks for zarr.json and .zarray, precomputed for a chunk of a sparse volume: 403 is
    "not there", as S3 answers it where the bucket cannot be listed."""
    server, url = serve(web, Private)
    try:
        assert_reads_as_on_disk(url, web)
    finally:
        server.shutdown()
        server.server_close()


def test_a_chunk_never_written_costs_one_request_once_a_chunk_was_found_by_its_name(web):
    """Over HTTP a precomputed chunk is looked for as neuroglancer looks for it, by its bare name,
    once one was found so: not also under each compressed suffix CloudVolume writes on disk."""
    server, url = serve(web, Counted)
    with_state(server, asked=[])
    try:
        spec = ArraySpec.parse(f"precomputed://{url}/sparse-png")
        np.testing.assert_array_equal(np.asarray(open_array(spec)), np.asarray(open_array(str(web / "sparse-png"))))
    finally:
        server.shutdown()
        server.server_close()
    assert [path.rsplit("/", 1)[1] for path in server.asked if "0-8_8-13_4-7" in path] == ["0-8_8-13_4-7"]
    assert len(server.asked) == len(set(server.asked))


def test_a_box_and_a_fingerprint_over_http_ask_for_their_chunks_at_once(web):
    """Over HTTP each request waits on the server, so a box's chunks (precomputed, N5) and the
    fingerprint's sampled boxes (any format) are asked for at once, not one after another."""
    from densepred.io.axes import AxesView
    from densepred.io.fingerprint import array_fingerprint
    from densepred.io.reading import waits

    assert not waits(AxesView(np.ones((2, 3)), "YX", ["Y", "X"]))  # a view of an array in memory

    server, url = serve(web, Slow)
    with_state(server, flying=0, most=0)
    try:
        for form in ("precomputed://sharded-jpeg", "precomputed://sparse-png", "v.zarr", "em.zarr/recon-1/em/s0"):
            there, here = open_array(remote(url, form)), open_array(local(web, form))
            assert waits(there)
            assert not waits(here)
            server.most = 0
            assert array_fingerprint(there, 3) == array_fingerprint(here, 3)
            assert server.most > 1, form
            if "precomputed" in form:
                server.most = 0
                np.testing.assert_array_equal(there[:, :, :], here[:, :, :])
                assert server.most > 1, form
    finally:
        server.shutdown()
        server.server_close()
    readers = [t for t in threading.enumerate() if t.name.startswith("densepred-read")]
    assert readers
    assert all(t.daemon for t in readers)  # an exit never waits on a request to a server that stalls


class Stalling(Ranged):
    """Holds each request for a chunk for a minute; ``asked`` is set at the first."""

    def send_head(self):
        if "/c/" in self.path:
            self.server.asked.set()
            time.sleep(60)
        return super().send_head()


@pytest.mark.slow  # 5 s; the reading threads are checked to be daemons in make test (the test above)
def test_ctrl_c_while_a_server_stalls_exits_at_once(tmp_path, web):
    server, url = serve(web, Stalling)
    server.asked, server.daemon_threads = threading.Event(), True
    config = make_config(tmp_path)
    run = subprocess.Popen([sys.executable, "-m", "densepred", "predict", str(config), "--input", f"{url}/v.zarr",
                            "--output", str(tmp_path / "o.zarr")], stderr=subprocess.PIPE, text=True)
    try:
        assert server.asked.wait(60)
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=20) == 130, run.stderr.read()  # not after the stalled requests' minute
    finally:
        run.kill()
        server.shutdown()
        server.server_close()
    assert "interrupted" in run.stderr.read()


def test_a_prediction_through_a_busy_server_equals_the_one_from_disk(tmp_path, web, monkeypatch):
    server, url = busy_server(web)
    config = make_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    try:
        for source, output in ((f"{url}/v.zarr", "http.zarr"), (str(web / "v.zarr"), "disk.zarr")):
            assert main(["predict", str(config), "--input", source, "--output", output, "--quiet"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "http.zarr" / "0")[:],
                                  zarr.open_array(tmp_path / "disk.zarr" / "0")[:])


def test_a_server_that_stays_busy_or_asks_for_credentials_is_one_line(tmp_path, web, capsys):
    config = make_config(tmp_path)
    cases = ((lambda: busy_server(web, failing=("/c/",)), "5 times: the server is busy or the connection is lost"),
             (lambda: busy_server(web, failing=("/",)), "5 times: the server is busy"),
             (lambda: serve(web, Credentials), "HTTP 401 Unauthorized: the server refused access"))
    for start, message in cases:
        server, url = start()
        try:
            code = main(["predict", str(config), "--input", f"{url}/v.zarr", "--output", str(tmp_path / "o.zarr"),
                         "--quiet"])
        finally:
            server.shutdown()
            server.server_close()
        one_error_line(capsys, code, message)
        assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize(("spec", "url", "key"), [
    ("s3://janelia-cosem-datasets/jrc_hela-2/jrc_hela-2.zarr/recon-1/em/fibsem-uint8/s0",
     "https://janelia-cosem-datasets.s3.amazonaws.com/jrc_hela-2/jrc_hela-2.zarr", "recon-1/em/fibsem-uint8/s0"),
    ("zarr://s3://janelia-cosem-datasets/jrc_hela-2/jrc_hela-2.zarr/recon-1/em/fibsem-uint8",
     "https://janelia-cosem-datasets.s3.amazonaws.com/jrc_hela-2/jrc_hela-2.zarr", "recon-1/em/fibsem-uint8"),
    ("precomputed://gs://neuroglancer-janelia-flyem-hemibrain/emdata/clahe_yz/jpeg:8.0x8.0x8.0",
     "https://storage.googleapis.com/neuroglancer-janelia-flyem-hemibrain/emdata/clahe_yz/jpeg", "8.0x8.0x8.0"),
    ("n5://gs://bucket/c.n5/em/s0", "https://storage.googleapis.com/bucket/c.n5", "em/s0"),
    ("zarr3://https://host/x.zarr:a/b", "https://host/x.zarr", "a/b"),
])
def test_buckets_and_neuroglancer_sources_are_read_at_their_public_https_address(spec, url, key):
    parsed = ArraySpec.parse(spec)
    assert (parsed.url, parsed.key) == (url, key)
    assert ArraySpec.parse(str(parsed)) == parsed  # as the run record and the cluster's workers name it


def test_a_scheme_not_read_and_a_bucket_as_output_are_one_line(tmp_path, capsys):
    config = make_config(tmp_path)
    for source, output, message in (("ftp://host/v.zarr", "o.zarr", "densepred reads over http(s)://, s3:// and gs://"),
                                    ("in.npy", "s3://bucket/o.zarr", "is a URL; densepred reads zarr stores")):
        np.save(tmp_path / "in.npy", np.ones((9, 9, 9), np.float32))
        code = main(["predict", str(config), "--input", str(tmp_path / source) if "://" not in source else source,
                     "--output", output, "--quiet"])
        one_error_line(capsys, code, message)


class Damaging(Ranged):
    """Answers one chunk at once with bytes that are no chunk, every other chunk after 0.5 s."""

    def send_head(self):
        if self.path.endswith("/0-8_0-8_0-4"):
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            return io.BytesIO(b"junk!")
        if "/1_1_1/" in self.path:
            time.sleep(0.5)
        return super().send_head()


@pytest.mark.slow  # 4 s; make test has the one-line errors of servers that stay busy or refuse (above)
def test_a_run_that_stops_with_reads_in_flight_says_one_line(tmp_path, web):
    """The reading threads' requests still in flight at exit (the session closed under them)
    are neither tried again nor reported: the error is the one line."""
    server, url = serve(web, Damaging)
    server.daemon_threads = True
    config = make_config(tmp_path)
    try:
        done = subprocess.run([sys.executable, "-m", "densepred", "predict", str(config), "--input",
                               f"precomputed://{url}/sparse-png", "--output", str(tmp_path / "o.zarr")],
                              check=False, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
