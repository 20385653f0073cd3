"""Every option of every training config group composes with train.yaml and trains (`trainer.fast_dev_run=true`)
on its own shipped defaults: the options are read from conf/ itself, so a new file is covered without a test edit.

Issue 19: what users run is what the tests run. Only the data are the test's: the demo generated small (data
settings), or the same rows in the option's own format for the data group. Image encoders see the shipped
224 px (data=comp5329 over the demo's files), not a test size.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import CONF, REPO, TINY_DEMO, compose_config
from omegaconf import DictConfig
from test_formats import write_formats

from mlcap.models.image_encoders import MissingWeightsError
from mlcap.train import train

# Groups that are not training options, covered elsewhere:
EXCLUDED_GROUPS = {
    "hydra": "Hydra's run/sweep folders and job logging, not a training option",
    "hydra/launcher": "sweep launchers (-m only): tests/test_launchers.py, tests/test_slurm.py",
    "sweep": "sweep presets (-m only): tests/test_sweeps.py",
    "hparams_search": "Optuna search presets (-m only): tests/test_search.py",
    "paper": "the study's published figures that sweep presets show in reports: tests/test_report.py",
}
# A group's base.yaml holds the defaults its options start from and names no option (e.g. `name: ???`).
BASE = "base"


def training_options() -> list[tuple[str, str]]:
    """(group, option) for every YAML file under conf/<group>/ (nested groups too), bar the excluded ones."""
    found = []
    for path in sorted(CONF.rglob("*.yaml")):
        group = path.parent.relative_to(CONF).as_posix()
        if group != "." and group not in EXCLUDED_GROUPS and path.stem != BASE:
            found.append((group, path.stem))
    return found


OPTIONS = training_options()
TIMES: dict[str, float] = {}


def test_discovery_finds_every_training_group() -> None:
    groups = {group for group, _ in OPTIONS}
    assert {
        "data",
        "model",
        "model/image_encoder",
        "model/loss",
        "model/scheduler",
        "trainer",
        "logger",
    } <= groups
    assert ("model/image_encoder", "efficientnet_lite0") in OPTIONS and ("data", "base") not in OPTIONS


@pytest.fixture(scope="module")
def shared(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """One demo data set, its rows in every format, and one feature cache for all the cases."""
    tmp = tmp_path_factory.mktemp("groups")
    yield {"demo": tiny_demo, "formats": write_formats(tiny_demo, tmp / "formats"), "cache": tmp / "cache"}
    slowest = sorted(TIMES.items(), key=lambda item: -item[1])
    print(f"\nconfig groups: {sum(TIMES.values()):.0f} s in all; slowest: {slowest[:6]}")


def data_overrides(group: str, option: str, shared: dict[str, object]) -> list[str]:
    """The data the case trains on: settings of the data group only, never of the option under test."""
    demo = shared["demo"]
    small_demo = [f"data.root={demo}", *(f"data.demo.{k}={v}" for k, v in TINY_DEMO.items())]
    if group == "data":
        return small_demo if option == "demo" else shared["formats"][option][1:]  # type: ignore[index]
    if group == "model/image_encoder":
        return ["data=comp5329", f"data.root={demo}"]  # the demo's files at the shipped image size (224)
    if group == "experiment":
        return [f"data.root={demo}"]  # experiments choose their data group (comp5329) themselves
    return small_demo


def _gpus_missing(cfg: DictConfig) -> str | None:
    if cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.device_count() < cfg.trainer.devices:
        return f"needs {cfg.trainer.devices} GPU(s), this machine has {torch.cuda.device_count()}"
    return None


def _missing_weights(err: BaseException | None) -> BaseException | None:
    """The MissingWeightsError in the chain of causes, if any."""
    while err is not None and not isinstance(err, MissingWeightsError):
        err = err.__cause__
    return err


def _train_in_subprocess(overrides: list[str], tmp_path: Path) -> None:
    """DDP re-runs the command line for its other ranks: train.py as a user starts it."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID")
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.mark.slow  # 4.5 minutes in all on 2 busy cores; the default `python -m pytest -q` runs it
@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_trains_with_its_shipped_defaults(
    group: str, option: str, shared: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if (group, option) == ("model/image_encoder", "timm"):
        pytest.skip(
            "model/image_encoder=timm names no model (name: ???) and loads timm hub weights (a download)"
        )
    monkeypatch.chdir(tmp_path)  # logger=mlflow writes mlruns/ where train.py starts
    overrides = [
        f"{group}={option}",
        *data_overrides(group, option, shared),
        f"paths.cache_dir={shared['cache']}",
        "trainer.fast_dev_run=true",
    ]
    cfg = compose_config("train", *overrides, output_dir=tmp_path / "run")
    if reason := _gpus_missing(cfg):
        pytest.skip(f"{group}={option} {reason}")
    start = time.monotonic()
    try:
        if str(cfg.trainer.get("strategy", "")).startswith("ddp"):
            _train_in_subprocess(overrides, tmp_path)
        else:
            assert cfg.monitor.replace("/", "_") in train(cfg)  # the task's score (a captioner's: CIDEr-D)
    except Exception as err:  # Hydra wraps the encoder's error in an InstantiationException
        if not isinstance(missing := _missing_weights(err), MissingWeightsError):
            raise
        pytest.skip(f"{group}={option}: its weights are not installable offline (torchvision/hub): {missing}")
    finally:
        TIMES[f"{group}={option}"] = time.monotonic() - start
