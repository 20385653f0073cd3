"""Trackers: logger=csv, logger=mlflow (MLflow's local store by default), logger=many; the same metrics in each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, compose_config, fast_overrides
from mlflow.tracking import MlflowClient


def test_logger_options_compose(tmp_path: Path) -> None:
    assert list(compose_config("train").logger) == ["tensorboard"]  # the default
    assert list(compose_config("train", "logger=many").logger) == ["tensorboard", "csv", "mlflow"]
    assert list(compose_config("train", "logger=[csv,mlflow]").logger) == ["csv", "mlflow"]
    mlflow = compose_config("train", "logger=mlflow", output_dir=tmp_path / "run-a").logger.mlflow
    assert mlflow.tracking_uri is None and mlflow.save_dir == "mlruns" and mlflow.run_name == "run-a"


@pytest.mark.slow
def test_csv_and_mlflow_log_the_runs_metrics_and_hparams(tiny_demo: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(  # started from tmp_path: the default MLflow store is ./mlruns there
        [
            sys.executable,
            str(REPO / "train.py"),
            "logger=many",
            *fast_overrides(tiny_demo, tmp_path / "cache"),
            "trainer.max_epochs=2",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    f1s = [epoch["val/samples_f1"] for epoch in metrics["history"]]

    csv = pd.read_csv(run_dir / "csv" / "metrics.csv")
    assert csv["val/samples_f1"].dropna().tolist() == pytest.approx(f1s)
    assert csv["hp/best_val_samples_f1"].dropna().tolist() == pytest.approx([metrics["val_samples_f1"]])
    assert "lr:" in (run_dir / "csv" / "hparams.yaml").read_text()

    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    experiment = client.get_experiment_by_name("train")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val/samples_f1")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(f1s)
    assert run.data.metrics["hp/best_val_samples_f1"] == pytest.approx(metrics["val_samples_f1"])
    assert float(run.data.params["lr"]) == 3e-4 and run.data.params["model.hidden_dim"] == "16"
    assert run.data.tags["run_folder"] == str(run_dir)
    assert list(run_dir.glob("events.out.tfevents.*"))  # TensorBoard beside them
