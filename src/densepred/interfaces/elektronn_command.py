"""``densepred import-elektronn``: an ELEKTRONN 1 config and its ``.param`` weights as a
densepred config and safetensors weights, read without running either."""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger("densepred")


def add_import_elektronn(sub: Any) -> None:
    command = sub.add_parser("import-elektronn", help="convert an ELEKTRONN 1 config (and its .param weights) "
                             "into a densepred config and safetensors weights, running neither")
    command.add_argument("config", help="the ELEKTRONN 1 config (a Python file; parsed, never run)")
    command.add_argument("param", nargs="?", help="its weights, e.g. <save_name>-LAST.param (read as data only)")
    command.add_argument("--out", required=True, metavar="DIR", help="folder for <name>.toml and "
                         "<name>-LAST.safetensors")
    command.add_argument("--in-channels", type=int, metavar="N",
                         help="input channels (features for a vect-scalar net) when no .param gives them")
    command.add_argument("--n-classes", type=int, metavar="N", help="classes when the config says n_lab = None "
                         "and no .param gives them")
    command.set_defaults(run=run_import_elektronn)


def run_import_elektronn(args: argparse.Namespace) -> int:
    from ..networks.elektronn import config_geometry_text, import_elektronn

    logging.basicConfig(level=logging.WARNING, format="densepred: warning: %(message)s")
    result = import_elektronn(args.config, args.param, args.out, args.in_channels, args.n_classes)
    for warning in result.warnings:
        log.warning("%s", warning)
    print(f"wrote {result.config}" + (f" and {result.weights}" if result.weights else " (no weights: give the "
                                      ".param file to convert them)"))
    print(f"network '{result.converted.name}': {config_geometry_text(result.converted)}; "
          f"{len(result.warnings)} setting(s) not carried (named above and in the file's comments)")
    if result.weights:
        print(f"predict with: densepred predict {result.config} --input IMAGE --output OUT (ELEKTRONN's x, y, z "
              "data in z, y, x order)")
    return 0
