"""``densepred test-model``: a bioimage.io package's own test, run through densepred.

Every package carries test inputs and the outputs its model gave for them: the zoo's definition
of a correct run (bioimageio.core's ``test_model``). For each weights format the package has
locally (or the one asked for) and each output with a test tensor, the test input is predicted

* **whole** - one window that covers the image (the smallest size the model accepts, or its
  fixed size), and
* **tiled** - exact windows smaller than the image, where the model can be tiled exactly and
  such a window exists,

then the postprocessing after the net's activation is applied voxel by voxel and the result is
compared with the test output: a value is off when ``|got - expected| > atol + rtol |expected|``
(the package's reproducibility tolerance, else the zoo's: 1.5e-4 and 1e-4), and a check passes
when no more values are off than the package allows per million (none by default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DensePredError
from ..networks.bioimageio import Download, ZooModel, describe, load_zoo, zoo_model, zoo_net
from ..networks.bioimageio import local_file as package_file
from ..networks.foreign import ForeignNet
from ..networks.processing import apply_step
from ..networks.zoo_description import Description, Output, output_steps
from ..running.planning.model_window import covering_window, exact_counter, smallest_exact


@dataclass(frozen=True)
class ZooCheck:
    """One comparison with a test output (``passed`` None: skipped, ``text`` says why)."""

    name: str
    passed: bool | None
    text: str

    def line(self) -> str:
        word = "skip" if self.passed is None else "pass" if self.passed else "FAIL"
        return f"{word}  {self.name}: {self.text}"


def run_zoo_test(rdf: str | Path, *, weights_format: str | None = None, trust_imports: Sequence[str] = (),
                    device: Any = None) -> list[ZooCheck]:
    """The package's test inputs through densepred, compared with its test outputs (module
    docstring). Raises :class:`DensePredError` for a package it cannot run."""
    descr = describe(rdf)
    zoo_model(descr, rdf, trust_imports, weights_format)  # refuses what cannot run before anything runs
    if descr.test_input is None:
        raise DensePredError(f"{rdf} has no test input; the zoo's test needs its test_tensor")
    image = _test_input(descr, rdf)
    formats = [weights_format] if weights_format else [w.format for w in descr.weights]
    checks: list[ZooCheck] = []
    for form in formats:
        for index, output in enumerate(descr.outputs):
            if output.test is None:
                continue
            try:
                zoo = zoo_model(descr, rdf, trust_imports, form, index if len(descr.outputs) > 1 else None)
            except Download as exc:
                checks.append(ZooCheck(form, None, str(exc)))
                break
            expected = _array(descr, output.test, rdf)
            checks += _output_checks(zoo_net(load_zoo(zoo, rdf), zoo), zoo, output, image, expected, device, rdf)
    return checks


def _output_checks(net: ForeignNet, zoo: ZooModel, output: Output, image: np.ndarray, expected: np.ndarray,
                   device: Any, rdf: Any) -> list[ZooCheck]:
    """The whole and the tiled check of one output from one weights format."""
    assert zoo.description is not None
    tolerance = zoo.description.tolerance(output.name, zoo.weights_format)
    steps = output_steps(zoo.after, rdf)
    what = f"{zoo.weights_format}, output {output.name}"
    spatial = image.shape[2:]
    contract = net.contract
    cover = covering_window(contract, spatial)
    runs = [("whole", cover, "exact" if contract.exact else "blend")]
    if not contract.exact:
        skip = f"not tiled: {contract.reason}"
    else:
        small = smallest_exact(contract)
        count = exact_counter(spatial, contract, contract.context)
        skip = "" if math.prod(count(axis, w) for axis, w in enumerate(small)) > 1 else (
            f"not tiled: the smallest exact window {_text(small)} covers the image")
        runs.append(("tiled", small, "exact"))
    checks = []
    for name, window, mode in runs if not skip else runs[:1]:
        got = np.stack([_predict(net, sample, window, mode, device, steps) for sample in image])
        checks.append(_compare(f"{what}, {name} (window {_text(window)}, {mode})", got, expected, output, tolerance))
    if skip:
        checks.append(ZooCheck(f"{what}, tiled", None, skip))
    return checks


def _predict(net: ForeignNet, sample: np.ndarray, window: tuple[int, ...], mode: str, device: Any,
             steps: Sequence[Any]) -> np.ndarray:
    from ..running import predict_dense

    result = np.asarray(predict_dense(net, sample, tile_shape=window, mode=mode, device=device))
    for step in steps:
        result = apply_step(step, result.astype(np.float32)) if step.name != "ensure_dtype" else result.astype(
            step.values["dtype"])
    return result


def _compare(name: str, got: np.ndarray, expected: np.ndarray, output: Output,
             tolerance: tuple[float, float, float]) -> ZooCheck:
    """``got`` (batch, channels, *space) in the output's axis order, against ``expected``."""
    got = _in_axes(got, output)
    if got.shape != expected.shape:
        return ZooCheck(name, False, f"shape {list(got.shape)}, the test output's is {list(expected.shape)}")
    atol, rtol, per_million = tolerance
    a, b = got.astype(np.float64), expected.astype(np.float64)
    off = int(np.count_nonzero(~(np.abs(a - b) <= atol + rtol * np.abs(b))))
    allowed = math.floor(per_million * b.size / 1e6)
    largest = float(np.nanmax(np.abs(a - b))) if b.size else 0.0
    return ZooCheck(name, off <= allowed, f"max |diff| {largest:.3g}; {off} of {b.size} values beyond {atol:g} + "
                                          f"{rtol:g}*|expected|" + (f" (allowed {allowed})" if allowed else ""))


def _test_input(descr: Description, rdf: Any) -> np.ndarray:
    """The test input as (batch, channels, *space)."""
    assert descr.test_input is not None
    array = _array(descr, descr.test_input, rdf)
    kinds = [kind for _, kind in descr.input_axes]
    if len(kinds) != array.ndim:
        raise DensePredError(f"{rdf}: its test input has {array.ndim} axes, its description {len(kinds)}")
    order = [kinds.index("batch")] if "batch" in kinds else []
    order += [kinds.index("channel")] if "channel" in kinds else []
    order += [i for i, kind in enumerate(kinds) if kind == "space"]
    if len(order) != len(kinds):
        raise DensePredError(f"{rdf}: its input has axes of kind {', '.join(sorted(set(kinds)))}; densepred "
                             "predicts batch, channel and space axes")
    array = array.transpose(order)
    if "batch" not in kinds:
        array = array[None]
    return array if "channel" in kinds else array[:, None]


def _in_axes(got: np.ndarray, output: Output) -> np.ndarray:
    """(batch, channels, *space) in the output's axis order (axes it lacks dropped)."""
    kinds = [kind for _, kind in output.axes]
    if "channel" not in kinds:
        got = got[:, 0]
    if "batch" not in kinds:
        got = got[0]
    present = [k for k in ("batch", "channel") if k in kinds] + ["space"] * kinds.count("space")
    source = {"batch": [], "channel": [], "space": []}
    for i, kind in enumerate(present):
        source[kind].append(i)
    order = [source[kind].pop(0) for kind in kinds]
    return got.transpose(order)


def _array(descr: Description, source: str, rdf: Any) -> np.ndarray:
    path = package_file(descr.root, source, rdf)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DensePredError(f"{rdf}: its test tensor {source} cannot be read as a .npy array: {exc}") from None


def _text(window: Sequence[int]) -> str:
    return "x".join(map(str, window))


__all__ = ["ZooCheck", "run_zoo_test"]
