"""zarr stores read over HTTP(S) (a local server here): an array, a zarr 2 group's array and an
OME-Zarr image read and predict as the same stores on disk; the mistakes a URL can hold are one
line, with nothing created."""

from __future__ import annotations

import functools
import http.server
import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

from densepred.errors import DensePredError
from densepred.interfaces.cli import main
from densepred.io import ArraySpec, input_stamp, open_array
from densepred.io.arrays import input_placement
from tests.conftest import make_config
from tests.test_array_specs import OME
from tests.test_reliability_files import one_error_line


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Ranged(Quiet):
    """Answers a ``Range: bytes=A-B`` request with those bytes alone, as object stores do
    (Python's own server sends the whole file)."""

    def send_head(self):
        wanted = self.headers.get("Range")
        if wanted is None:
            return super().send_head()
        try:
            data = Path(self.translate_path(self.path)).read_bytes()
        except OSError:
            self.send_error(404)
            return None
        first, _, last = wanted.removeprefix("bytes=").partition("-")
        part = data[int(first):int(last) + 1 if last else len(data)]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{int(first) + len(part) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        return io.BytesIO(part)


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # zarr asks for many chunks at once: a backlog of 5 drops connections, retried after 1 s


def serve(folder, handler=Quiet):
    server = Server(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def served(tmp_path):
    """``tmp_path/web`` over HTTP: its URL."""
    (tmp_path / "web").mkdir()
    server, url = serve(tmp_path / "web")
    yield url
    server.shutdown()
    server.server_close()


def two_channels():
    return (np.random.default_rng(21).random((2, 11, 37, 29)) * 255).astype(np.uint8)


@pytest.fixture
def volume():
    return two_channels()


def stores(web, volume):
    zarr.create_array(web / "v.zarr", shape=volume[0].shape, chunks=(4, 16, 16), dtype=np.uint8)[:] = volume[0]
    group = zarr.open_group(web / "g.zarr", mode="w", zarr_format=2)
    group.create_array("raw", shape=volume[0].shape, chunks=(4, 16, 16), dtype=np.uint8)[:] = volume[0]
    image = zarr.open_group(web / "em.zarr", mode="w").create_group("recon-1/em")
    image.attrs.update(OME)
    image.create_array("s0", shape=volume.shape, chunks=(1, 4, 16, 16), dtype=np.uint8,
                       dimension_names=["c", "z", "y", "x"])[:] = volume


def test_stores_over_http_read_and_place_as_the_same_stores_on_disk(tmp_path, served, volume):
    web = tmp_path / "web"
    stores(web, volume)
    for remote, local in ((f"{served}/v.zarr", web / "v.zarr"), (f"{served}/g.zarr/raw", f"{web / 'g.zarr'}:raw"),
                          (f"{served}/g.zarr:raw", f"{web / 'g.zarr'}:raw"),
                          (f"{served}/em.zarr/recon-1/em/s0", f"{web / 'em.zarr'}:recon-1/em/s0")):
        spec = ArraySpec.parse(remote)
        assert spec.url is not None
        there, here = open_array(spec), open_array(str(local))
        assert there.shape == here.shape
        np.testing.assert_array_equal(np.asarray(there), np.asarray(here))
        assert input_placement(spec) == input_placement(ArraySpec.parse(str(local)))
    assert tuple(input_placement(ArraySpec.parse(f"{served}/em.zarr/recon-1/em/s0")).voxel_size) == (40, 4, 4)


@pytest.mark.parametrize("handler", [Ranged, Quiet])  # byte ranges, and a server that sends whole files
def test_a_precomputed_volume_over_http_reads_and_lies_as_on_disk(handler):
    from tests.test_precomputed_inputs import DATA

    server, url = serve(DATA, handler)
    try:
        for name in ("sharded-jpeg", "sharded-murmur", "unsharded-png", "sharded-jpeg:8_8_40"):
            spec = ArraySpec.parse(f"precomputed://{url}/{name}")
            assert (spec.kind, str(spec)) == ("precomputed", f"precomputed://{url}/{name}")
            here = ArraySpec.parse(str(DATA / name))
            np.testing.assert_array_equal(np.asarray(open_array(spec)), np.asarray(open_array(here)))
            assert input_placement(spec) == input_placement(here)
        with pytest.raises(DensePredError, match=r"cannot read .*/none/info"):
            open_array(f"precomputed://{url}/none")
    finally:
        server.shutdown()
        server.server_close()


def test_a_time_point_over_http_is_read_and_stamped_by_its_values_alone(tmp_path, served, volume):
    movie = np.stack([volume, volume[:, ::-1]])  # t, c, z, y, x
    zarr.create_array(tmp_path / "web" / "m.zarr", shape=movie.shape, chunks=(1, 1, 4, 16, 16), dtype=np.uint8,
                      dimension_names=["t", "c", "z", "y", "x"])[:] = movie
    spec = ArraySpec.parse(f"{served}/m.zarr@t=1")
    np.testing.assert_array_equal(np.asarray(open_array(spec)), movie[1])
    assert input_stamp(spec) is None


def test_a_prediction_over_http_is_the_prediction_of_the_store_on_disk_and_resumes(tmp_path, served, volume,
                                                                                   monkeypatch):
    """The output named as the remote store, in the working folder, is no local copy of the input."""
    stores(tmp_path / "web", volume)
    config = make_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    for source, output in ((f"{served}/v.zarr", "v.zarr"), (str(tmp_path / "web" / "v.zarr"), "b.zarr")):
        assert main(["predict", str(config), "--input", source, "--output", output, "--quiet"]) == 0
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "v.zarr" / "0")[:],
                                  zarr.open_array(tmp_path / "b.zarr" / "0")[:])
    assert main(["predict", str(config), "--input", f"{served}/v.zarr", "--output", "v.zarr", "--resume",
                 "--quiet"]) == 0


def test_mistakes_with_urls_are_one_line_and_create_nothing(tmp_path, served, volume, capsys):
    stores(tmp_path / "web", volume)
    config = make_config(tmp_path)
    closed = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there now
    cases = {(f"{served}/none.zarr", "o.zarr"): "no zarr array or group is there",
             (f"http://127.0.0.1:{port}/v.zarr", "o.zarr"): "Cannot connect to host",
             (f"{served}/v.zarr:raw", "o.zarr"): "is a zarr array, not a group, so it holds no 'raw'",
             (f"{served}/stack.h5", "o.zarr"): "is a URL of no zarr store",
             (f"{served}/v.zarr?sig=abc", "o.zarr"): "has a query or fragment",
             (f"{served}/v.zarr", f"{served}/o.zarr"): "densepred reads zarr stores over HTTP(S) but writes to a file"}
    for (source, output), message in cases.items():
        target = output if "://" in output else str(tmp_path / output)
        code = main(["predict", str(config), "--input", source, "--output", target, "--quiet"])
        one_error_line(capsys, code, message)
        assert not (tmp_path / "o.zarr").exists()


def test_the_napari_widget_asks_for_an_output_file_for_a_layer_read_over_http(tmp_path):
    from densepred.interfaces.napari_plugin.request import ImageSource, PredictRequest

    image = ImageSource(np.zeros((2, 3, 4)), "remote", (1.0,) * 3, (0.0,) * 3, file="https://host/em.zarr:s0")
    request = PredictRequest(image=image, config=tmp_path / "net.toml")
    with pytest.raises(DensePredError, match=r"read over HTTP.*give an output file"):
        request.output_path()


def test_an_n5_dataset_over_http_reads_and_lies_as_on_disk(tmp_path, served, volume):
    from tests.test_n5_inputs import write_n5

    web = tmp_path / "web"
    write_n5(web / "c.n5" / "em" / "s0", volume[0], (4, 8, 8), "gzip", {"resolution": [4, 4, 40]})
    (web / "c.n5" / "attributes.json").write_text('{"n5": "2.5.1"}')
    for form in ("c.n5/em/s0", "c.n5:em/s0", "c.n5:em"):  # a multiscale group stands for its s0
        spec = ArraySpec.parse(f"{served}/{form}")
        here = ArraySpec.parse(f"{web / 'c.n5'}:em/s0")
        np.testing.assert_array_equal(np.asarray(open_array(spec)), np.asarray(open_array(here)))
        assert input_placement(spec) == input_placement(here) is not None
    with pytest.raises(DensePredError, match=r"over HTTP\(S\) a group cannot be listed: name the dataset"):
        open_array(f"{served}/c.n5")


def test_neuroglancer_sources_of_paths_without_a_suffix_read_as_on_disk(tmp_path, served, volume, monkeypatch):
    """``zarr://URL`` and ``n5://URL``: the node or dataset at a path named without .zarr or .n5,
    as neuroglancer opens them, with the placement of their metadata; a run predicts it as the
    store on disk."""
    from tests.test_n5_inputs import write_n5

    web = tmp_path / "web"
    stores(web, volume)
    shutil.copytree(web / "em.zarr", web / "data")
    write_n5(web / "c" / "em" / "s0", volume[0], (4, 8, 8), "gzip", {"resolution": [4, 4, 40]})
    for spec, here in ((f"zarr://{served}/data/recon-1/em", f"{web / 'em.zarr'}:recon-1/em"),
                       (f"zarr3://{served}/data/recon-1/em/s0", f"{web / 'em.zarr'}:recon-1/em/s0"),
                       (f"n5://{served}/c/em", f"{web / 'c' / 'em' / 's0'}")):
        there = ArraySpec.parse(spec)
        assert ArraySpec.parse(str(there)) == there  # as the run record and a cluster's workers name it
        np.testing.assert_array_equal(np.asarray(open_array(there)), np.asarray(open_array(here)))
    for level in ("", "/s0"):  # the image group, and its level named alone: placed by the group's metadata
        assert input_placement(ArraySpec.parse(f"zarr://{served}/data/recon-1/em{level}")) == input_placement(
            ArraySpec.parse(f"{web / 'em.zarr'}:recon-1/em")) is not None
    assert input_placement(ArraySpec.parse(f"{served}/v.zarr")) is None  # a store's root array: no group above
    config = make_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    for source, output in ((f"n5://{served}/c/em", "http.zarr"), (str(web / "c" / "em" / "s0"), "disk.zarr")):
        assert main(["predict", str(config), "--input", source, "--output", output, "--quiet"]) == 0
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "http.zarr" / "0")[:],
                                  zarr.open_array(tmp_path / "disk.zarr" / "0")[:])
