"""Layer 4, I/O (no torch): where images live, how they are read, where predictions are written.

* :mod:`.arrays` - array specs (``file.h5:dataset``, ``file.zarr[:path]``, ``.tif``, ``.npy``, ``.csv``)
* :mod:`.images` - an image as ``(C, *S)``, read box by box and scaled to float32
* :mod:`.outputs` - output arrays written tile by tile (OME-Zarr, HDF5, TIFF, NumPy), durably
* :mod:`.reading` - a box of a stored array, with one clear line when storage fails
* :mod:`.chunk_files`, :mod:`.shard_files`, :mod:`.local_zarr` - local zarr arrays read from
  their chunk files and written by whole chunks or shards in the calling thread (zarr's own
  values and bytes, without its event loop)
* :mod:`.output_checks` - what may be written or replaced: never data densepred did not write
* :mod:`.run_record` - the run record beside an output (``run.json``, ``done.log``), durably
* :mod:`.run_lock` - one run per output at a time
* :mod:`.pyramid` - an OME-Zarr output's pyramid levels, built while level 0 is written and
  completed after, resumably
* :mod:`.fingerprint` - a cheap fingerprint of an input's contents, to notice a changed input
* :mod:`.tiff_chunks` - compressed or tiled TIFF inputs read by their own strips or tiles
* :mod:`.synthetic` - synthetic EM-like volumes for the demo and the tests
"""

from .arrays import ArraySpec, open_array
from .fingerprint import array_fingerprint, file_stamp, input_stamp
from .images import ChannelFirst, WindowRows, read_window, to_float32
from .output_checks import check_not_input, check_writable, output_exists, remove_output
from .outputs import OUTPUT_DTYPES, OutputArray, create_output, open_output
from .tiff_chunks import kept_bytes_of

__all__ = [
    "OUTPUT_DTYPES",
    "ArraySpec",
    "ChannelFirst",
    "OutputArray",
    "WindowRows",
    "array_fingerprint",
    "check_not_input",
    "check_writable",
    "create_output",
    "file_stamp",
    "input_stamp",
    "kept_bytes_of",
    "open_array",
    "open_output",
    "output_exists",
    "read_window",
    "remove_output",
    "to_float32",
]
