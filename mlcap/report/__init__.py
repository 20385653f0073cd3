"""Sweep report: `python -m mlcap.report <multirun folder>` (also written automatically when a sweep ends).

Reads every job folder under the sweep folder (`.hydra/config.yaml`, `.hydra/overrides.yaml`, and
`metrics.json` or `failed.json`; neither means unfinished), plus the sweeper's `sweep_plan.json` for jobs
that never started. Writes into the sweep folder:

* `report.md`: one row per distinct setting (the config keys that differ between jobs, seed excluded) with
  train loss, val loss, val samples-F1 and the field's mAP, CF1 and OF1 as mean ± std over seeds, the model
  size against the 100 MB limit and the run time; for a one-at-a-time grid (sweep=table4) one table per varied key, each with the base
  point; the study's figures beside ours where the sweep carries them (hydra.callbacks.report.paper: its
  Tables 1-4 by setting, its best model's averages, per-class F1, run time and size beside our best setting);
  the best run's per-class table; failed and unfinished jobs;
* `jobs.csv`, `settings.csv` (and `settings_<key>.csv` for a one-at-a-time grid), `best_per_class.csv`;
* PNG plots of val samples-F1 against each varied key (error bars: std over seeds) and of the best run's
  per-class precision/recall/F1.

Modules, one job each: loading (job folders -> JobRecords), tables (settings, one-at-a-time, Markdown),
plots, paper and paper_best (the study beside ours), search and captions (their sections), writer (report.md
as a whole), callback (Hydra), cli (`python -m mlcap.report`).
"""

from mlcap.report.callback import ReportCallback
from mlcap.report.cli import main
from mlcap.report.loading import JobRecord, load_jobs, varied_keys
from mlcap.report.paper import sweep_paper
from mlcap.report.tables import jobs_frame, one_at_a_time_tables, settings_table
from mlcap.report.writer import write_report

__all__ = [
    "JobRecord",
    "ReportCallback",
    "jobs_frame",
    "load_jobs",
    "main",
    "one_at_a_time_tables",
    "settings_table",
    "sweep_paper",
    "varied_keys",
    "write_report",
]
