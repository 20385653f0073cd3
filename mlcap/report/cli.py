"""Sweep report: `python -m mlcap.report <multirun folder>` (also written automatically when a sweep ends).

The command line: parse the arguments, write the report, print its path; a bad folder or file is one
`error:` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mlcap.report.paper import sweep_paper
from mlcap.report.writer import LAYOUTS, write_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlcap.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder, e.g. multirun/table1")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="one table, one table per varied key, or decide from the sweep plan (default)",
    )
    parser.add_argument(
        "--paper",
        metavar="SWEEP",
        help="show the study's figures that sweep=SWEEP carries now (conf/sweep/SWEEP.yaml, e.g. study), or "
        "none; default: those the sweep was run with (its multirun.yaml), plus any its sweep config has "
        "gained since",
    )
    args = parser.parse_args(argv)
    try:
        paper = None if args.paper is None else {} if args.paper == "none" else sweep_paper(args.paper)
        report = write_report(args.sweep_dir, layout=args.layout, paper=paper)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0
