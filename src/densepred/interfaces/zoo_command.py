"""``densepred test-model``: a bioimage.io package's own test inputs through densepred, compared
with its test outputs; one line per check, exit 0 when all pass, 1 when one fails, 2 when the
package cannot be run (with why)."""

from __future__ import annotations

import argparse
from typing import Any


def add_test_model(sub: Any) -> None:
    command = sub.add_parser("test-model", help="run a bioimage.io package's test inputs, whole and tiled, and "
                             "compare with its test outputs at the zoo's tolerance")
    command.add_argument("package", metavar="rdf.yaml|MODEL.zip", help="the package's description or zip file")
    command.add_argument("--weights-format", choices=["pytorch_state_dict", "torchscript", "onnx"],
                         help="test these weights only (default: every format the package has locally)")
    command.add_argument("--trust-imports", metavar="PKG", action="append", default=[],
                         help="let the package import its architecture from the installed package PKG")
    command.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    command.set_defaults(run=run_test_model)


def run_test_model(args: argparse.Namespace) -> int:
    import logging

    from .zoo_test import run_zoo_test

    logging.basicConfig(level=logging.WARNING, format="densepred: warning: %(message)s")
    checks = run_zoo_test(args.package, weights_format=args.weights_format, trust_imports=args.trust_imports,
                          device=args.device)
    for check in checks:
        print(check.line())
    failed = sum(check.passed is False for check in checks)
    passed = sum(check.passed is True for check in checks)
    print(f"{args.package}: {passed} passed, {failed} failed, {len(checks) - passed - failed} skipped")
    return 1 if failed or not passed else 0
