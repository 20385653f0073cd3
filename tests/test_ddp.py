"""Real Lightning DDP on two CPU processes (gloo), through the train.py command line as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, compose_config, fast_overrides

from mlcap.extraction import prepare_inputs
from mlcap.inference import probabilities
from mlcap.metrics import decide_labels, samples_f1
from mlcap.models.lit_module import MultiLabelClassifier
from mlcap.train import build_datamodule

# Rank 0 writes all of these; rank 1 (re-launched by Lightning with hydra.output_subdir=null) only its log.
RANK_ZERO_FILES = {
    ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", ".mlcap.lock", "train.log",
    "checkpoints/best.ckpt", "checkpoints/last.ckpt", "config_resolved.yaml", "hparams.yaml", "metrics.json",
    "per_class.csv", "per_class.md",
}  # fmt: skip
RANK_ONE_FILES = {"train_ddp_process_1.log"}


def test_ddp_on_two_cpu_processes_writes_one_result_equal_to_a_single_process_evaluation(
    tiny_demo: Path, tmp_path: Path
) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    overrides = [*fast_overrides(tiny_demo, cache), "data.cache_views=1", "trainer.max_epochs=2"]
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID")
    }
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "trainer=ddp_cpu", *overrides, f"hydra.run.dir={run}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    written = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    events = {f for f in written if f.startswith("events.out.tfevents.")}
    assert written - events == RANK_ZERO_FILES | RANK_ONE_FILES
    assert len({name.split(".")[4] for name in events}) == 1  # every TensorBoard file from one process (pid)
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("metrics.json")] == [Path("run/metrics.json")]
    rank_one_log = (run / "train_ddp_process_1.log").read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in rank_one_log  # rank 1 did run, in this folder

    # The feature cache: one file, computed by one rank; the other waited for it or found it.
    assert len(list((cache / "features").glob("efficientnet_lite0-*.npy"))) == 1
    logs = (run / "train.log").read_text() + rank_one_log
    assert logs.count("feature cache miss") == 1 and "feature cache hit" in logs

    metrics = json.loads((run / "metrics.json").read_text())
    # Same predictions; metrics.json's F1 is sklearn's (float64), samples_f1 a float32 tensor: equal to 1e-6.
    assert metrics["val_samples_f1"] == pytest.approx(single_process_f1(overrides, run), abs=1e-6)


def single_process_f1(overrides: list[str], run: Path) -> float:
    """Samples-F1 of the saved best checkpoint on the validation split, evaluated in this one process."""
    datamodule = build_datamodule(compose_config("train", *overrides, output_dir=run))
    model = MultiLabelClassifier.load_from_checkpoint(run / "checkpoints/best.ckpt", load_pretrained=False)
    datamodule.use_inputs(prepare_inputs(datamodule, model.net.image_encoder))
    probs = probabilities(model, datamodule.val_dataloader(), "cpu")
    target = datamodule.labels("val").int()
    return float(samples_f1(decide_labels(probs, model.threshold).int(), target))
