"""Reading a resume's ``done.log``: seconds and memory for a run of many pieces.

Each reader runs in a fresh process over a log of ``N`` lines (``done_line`` of 0 .. N-1);
"set" is the reader as it was (a Python set of ids, the lines decoded as text and split),
"bits" is :func:`densepred.io.run_record.read_done` (:class:`~densepred.io.done_ids.DoneIds`,
one bit per id). Memory is the growth of the process's peak resident size while reading.

    python benchmarks/done_log.py                  # 10^5, 10^6 and 10^7 lines
    python benchmarks/done_log.py --lines 1000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from densepred.io.run_record import DONE_LOG, done_line

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from densepred.io.run_record import done_line, read_done

def read_as_a_set(folder):
    text = (Path(folder) / "done.log").read_text(encoding="ascii", errors="replace")
    done = set()
    for line in text.split("\n")[:-1]:
        parts = line.split(" ")
        if len(parts) == 2 and parts[0].isdigit() and done_line(int(parts[0])) == line + "\n":
            done.add(int(parts[0]))
    return done

reader = {"set": read_as_a_set, "bits": read_done}[sys.argv[1]]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
done = reader(sys.argv[2])
seconds = time.perf_counter() - start
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"seconds": seconds, "mib": grown / 1024, "ids": len(done)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, nargs="+", default=[10**5, 10**6, 10**7])
    args = parser.parse_args()
    print("| lines | log (MiB) | set: s / MiB | bits: s / MiB |")
    print("|---|---|---|---|")
    for lines in args.lines:
        with tempfile.TemporaryDirectory(prefix="densepred-done-") as folder:
            with open(Path(folder) / DONE_LOG, "w") as f:
                for piece_id in range(lines):
                    f.write(done_line(piece_id))
            size = (Path(folder) / DONE_LOG).stat().st_size / 2**20
            found = {}
            for reader in ("set", "bits"):
                done = subprocess.run([sys.executable, "-c", CHILD, reader, folder], capture_output=True, text=True,
                                      check=True)
                found[reader] = json.loads(done.stdout)
                assert found[reader]["ids"] == lines
            print(f"| {lines:,} | {size:.0f} | {found['set']['seconds']:.2f} / {found['set']['mib']:.0f} | "
                  f"{found['bits']['seconds']:.2f} / {found['bits']['mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
