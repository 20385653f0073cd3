"""The Hydra callback (conf/train.yaml: hydra.callbacks.report) that writes a sweep's report when a multirun
ends and makes the sweep's exit code say whether every job finished; it warns when sweep=... runs without -m.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mlcap.report.loading import FINISHED, load_jobs
from mlcap.report.writer import write_report

log = logging.getLogger("mlcap.report")  # the name its log lines have always carried


class ReportCallback(Callback):
    """Hydra callback (hydra.callbacks.report) that writes the sweep's report when a multirun ends."""

    def __init__(self, layout: str = "auto", paper: Mapping[str, Any] | None = None) -> None:
        self.layout = layout
        # The study's tables (conf/paper/*.yaml), composed in by the table sweeps.
        self.paper = OmegaConf.to_container(paper) if OmegaConf.is_config(paper) else paper

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.runtime.choices.get("sweep") is None:
            return
        log.warning(
            "a sweep config (sweep=...) only takes effect with -m: this runs a single job with the base "
            "config. Use `python train.py -m sweep=...`."
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the report; exit non-zero (after it) when a job did not finish or the report failed.

        Hydra turns a callback's exceptions into warnings, so the exit code is set through SystemExit.
        """
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            report = write_report(sweep_dir, layout=self.layout, paper=self.paper)
            jobs = load_jobs(sweep_dir)
        except Exception as err:
            log.exception("could not write the sweep report")
            raise SystemExit(f"error: no report ({err}); run `python -m mlcap.report {sweep_dir}`") from None
        log.info("sweep report: %s", report)
        problems = [j for j in jobs if j.status != FINISHED]
        if problems:
            raise SystemExit(
                f"error: {len(problems)} of {len(jobs)} jobs did not finish: "
                + ", ".join(f"{j.name} ({j.status})" for j in problems)
                + f". See {report}; re-run the same command to retry them."
            )
