"""A model's window measured on the CPU in a process of its own: its time and its peak memory.

Measured in one process, a window's resident growth depends on the windows measured before
it: after a window whose heap kept its freed maps, the next window's growth was a third higher
than in a fresh process (``benchmarks/model_window_memory.py``). A prediction runs one window
shape with one heap policy throughout, so each window of the ladder gets a fresh process, as a
prediction would: the model is built there from the same fields (with the tiling contract the
profile probed, handed over: it is not probed again), the run is created with the window
given, and one warm-up forward is followed by ``repeats`` timed ones. The peak is the peak resident set over
those forwards (``VmHWM``, reset through ``/proc/self/clear_refs`` once the model is loaded)
above the resident set before them: the bytes a prediction's window adds to the model.

A window that runs the machine out of memory kills its process, not the profile: the window
is reported as out of memory. The process is started as ``python -c`` (no multiprocessing
spawn re-running the caller's script); the request goes in on standard input and the reply
comes back as the last line of standard output, both JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import DensePredError
from ...networks import contract_cache
from ...networks.bioimageio import unpacked_here

# the process ends once it has replied: the interpreter's teardown of torch took 0.7-0.9 s a window
CHILD_MAIN = ("import os, sys; from densepred.running.profiling.model_window_process import serve; serve(); "
              "sys.stdout.flush(); sys.stderr.flush(); os._exit(0)")


def measure_in_process(fields: dict[str, Any], shape: Sequence[int], window: Sequence[int], precision: str,
                       memory_limit: int | None, heap_kept: bool, repeats: int) -> dict[str, Any]:
    """``{"seconds": median, "peak_bytes": growth}`` of ``window`` measured in a fresh process,
    or ``{"status": "oom"}`` where the process was killed (the kernel's OOM killer) or torch
    could not allocate."""
    unpacked = unpacked_here(fields["model_file"]) if fields.get("model_file") else None
    fields = {**fields, "model_file": unpacked or fields.get("model_file")}  # a zoo package: never unpacked again
    request = {"fields": {k: str(v) if isinstance(v, Path) else v for k, v in fields.items()},
               "shape": list(shape), "window": list(window), "precision": precision, "memory_limit": memory_limit,
               "heap_kept": heap_kept, "repeats": repeats, "contracts": contract_cache.seen()}
    try:
        text = json.dumps(request)
    except TypeError as exc:  # model_kwargs from Python holding objects, say
        raise DensePredError(f"the model's fields cannot be sent to a process that measures a window ({exc}); "
                             "profile with peaks=False (--no-peaks) to measure in this process") from None
    # the process's temporary files (a bioimage.io package unpacked again) go with it, even killed
    with tempfile.TemporaryDirectory(prefix="densepred-window-") as scratch:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), TMPDIR=scratch)
        done = subprocess.run([sys.executable, "-c", CHILD_MAIN], input=text, capture_output=True, text=True,
                              env=env, check=False)
    if done.returncode == -signal.SIGKILL:
        return {"status": "oom"}
    lines = done.stdout.strip().splitlines()
    reply = json.loads(lines[-1]) if done.returncode == 0 and lines else None
    if reply is None or "error" in reply:
        why = reply["error"] if reply else (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise DensePredError(f"measuring window {list(window)} in its own process failed: {why}")
    return reply


def model_for(fields: dict[str, Any], input: str | None, shape: Sequence[int] | None) -> tuple[Any, Any]:
    """The net of a profile's model and its image (:func:`~..jobs.model_plan.sized_model`), with
    the parameters a model built without weights gets always the same (a fixed seed, the
    caller's random state kept): each window's process then builds the very model the profile
    probed, whose contract it is handed (:mod:`~densepred.networks.contract_cache`)."""
    import torch

    from ..jobs.model_plan import sized_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net, image, _ = sized_model(fields, input, shape, "uint8", "profile")
    return net, image


def serve() -> None:
    """The measuring process: one window, then exit."""
    request = json.loads(sys.stdin.read())
    contract_cache.given(request.pop("contracts", {}))  # the profile's probe, not probed again
    try:
        print(json.dumps(measure_window(**request)))
    except DensePredError as exc:
        print(json.dumps({"error": str(exc)}))


def measure_window(fields: dict[str, Any], shape: list[int], window: list[int], precision: str,
             memory_limit: int | None, heap_kept: bool, repeats: int) -> dict[str, Any]:
    import torch

    from ...io import ChannelFirst
    from ...networks.precision import precision_for
    from ...system import large_blocks_returned, proc_values, release_free_memory, reset_peak_resident
    from ..compute.model_run import ModelRun
    from ..compute.preprocess import Prepared
    from ..compute.windows import timed_window
    fields = {**fields, "trust_imports": tuple(fields.get("trust_imports") or ())}
    net, image = model_for(fields, None, shape)
    run = ModelRun.create(net, ChannelFirst(image, net.in_channels, net.dims), "exact", tuple(window), 0.0, None,
                          None, "cpu", Prepared((), ()), memory_limit=memory_limit, window_given=True)
    run.precision = precision_for(precision, run.device)
    with large_blocks_returned(not heap_kept):
        release_free_memory()
        before = proc_values().get("VmRSS", 0)
        reset = reset_peak_resident()
        try:
            seconds, _ = timed_window(run, window, repeats)
        except (torch.OutOfMemoryError, MemoryError):
            return {"status": "oom"}
        peak = proc_values().get("VmHWM", 0) if reset else 0
    return {"seconds": seconds, "peak_bytes": peak - before if peak and before else None, "status": "ok"}
