"""The report of a fixed sweep, byte for byte: issue 24 split mlcap/report.py into a package, and its files
must be what the code before the split wrote.

tests/fixtures/report_study/sweep is a `sweep=study seed=0,1` sweep on the tiny demo settings, made by the code
before the split, cut to what the report reads (.hydra/ configs, metrics.json, per_class.csv, the plan,
multirun.yaml) and to ten of its 38 jobs (the rest are "not started"): the paper's tables, its best model,
the one-at-a-time tables and the unfinished jobs are all in it. expected/ holds the report.md and CSVs that
code wrote for it (the sweep folder's path in report.md's title written as <sweep dir>).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

FIXTURE = Path(__file__).parent / "fixtures" / "report_study"
SWEEP_PATH = "<sweep dir>"


def test_report_files_unchanged(tmp_path: Path) -> None:
    """`python -m mlcap.report <sweep>` rewrites report.md and every CSV exactly as before the split."""
    sweep = tmp_path / "study"
    shutil.copytree(FIXTURE / "sweep", sweep)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "mlcap.report", str(sweep)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{sweep / 'report.md'}\n"
    expected = sorted(p.name for p in (FIXTURE / "expected").iterdir())
    written = sorted(p.name for p in sweep.iterdir() if p.suffix in (".md", ".csv"))
    assert written == expected
    for name in expected:
        got = (sweep / name).read_bytes().replace(str(sweep).encode(), SWEEP_PATH.encode())
        assert got == (FIXTURE / "expected" / name).read_bytes(), (
            f"{name} differs from the report before the split"
        )
    shown = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", (sweep / "report.md").read_text())
    assert (
        sorted(p.name for p in sweep.glob("*.png")) == sorted(shown) and len(shown) == 8
    )  # 7 keys + per class
