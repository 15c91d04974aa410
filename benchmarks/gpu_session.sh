#!/usr/bin/env bash
# A GPU session in two steps, for a lent NVIDIA machine: Python 3.12 with a CUDA build of torch
# and numpy, h5py, tifffile, safetensors, tqdm, matplotlib, scipy, pytest and hypothesis, but
# none of zarr, tomlkit, dask or MONAI, and no network.
#
#   bash benchmarks/gpu_session.sh fetch        # here: wheels of what the device lacks -> .whl/
#   bash benchmarks/gpu_session.sh run [PARTS]  # there, with .whl carried: the CUDA tests, then
#                                               # benchmarks/gpu_suite.py (PARTS: its --parts)
#
# `fetch` takes each package's version from this checkout's .venv (make test builds it), so
# the device runs what the tests here ran. `run` installs the wheels into /tmp/site, puts src/
# first on PYTHONPATH, and writes device.txt, cuda_tests.log and gpu_suite.md into $OUT (or
# ./out); each step has a time limit, so the whole run stays within one device call.
# SUITE_ARGS adds options to gpu_suite.py ("--device cpu --quick" smoke-runs it all on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

# what densepred and its tests need beyond the device image (see the device tool's KINDS.md)
MISSING=(zarr numcodecs donfig google-crc32c tomlkit dask distributed tblib tornado zict locket partd
         ome-zarr-models pydantic-zarr pydantic pydantic-core annotated-types typing-inspection monai)

fetch() {
    local python=.venv/bin/python pins=()
    [ -x "$python" ] || { echo "no .venv here: run make test first" >&2; exit 2; }
    for name in "${MISSING[@]}"; do
        pins+=("$name==$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
    done
    rm -rf .whl && mkdir .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${pins[@]}"
    du -sh .whl
    echo "carry .whl: run(command='bash benchmarks/gpu_session.sh run', carry=['.whl'])"
}

run() {
    local parts=${1:-exactness,precisions,profile,unet,models,training,pipeline,host} out=${OUT:-out}
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
      nproc
      python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$out/device.txt"
    cat "$out/device.txt"
    # -o addopts: the project's addopts load pytest-xdist, which the device image lacks
    timeout 240 python3 -m pytest -q -m cuda -rs -p no:cacheprovider -o addopts=-ra tests/test_cuda.py 2>&1 \
        | tee "$out/cuda_tests.log" || true
    # shellcheck disable=SC2086  # SUITE_ARGS: e.g. "--device cpu --quick" for a smoke run without a GPU
    timeout 330 python3 benchmarks/gpu_suite.py --parts "$parts" ${SUITE_ARGS:-} 2>&1 | tee "$out/gpu_suite.md" || true
}

case "${1:-}" in
    fetch) fetch ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash benchmarks/gpu_session.sh fetch | run [PARTS]" >&2; exit 2 ;;
esac
