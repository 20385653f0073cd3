"""Optuna search (`-m hparams_search=fusion_optuna`): trials as job folders, pruning, report, resume, refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import REPO, compose_config, fast_overrides

from mlcap.search import SearchError, SearchSpec, open_storage, trial_folder

# A pruner that stops every trial after its first epoch (val samples-F1 is never above 2).
PRUNE_AFTER_ONE_EPOCH = [
    "~hparams_search.pruner",
    "+hparams_search.pruner={_target_:optuna.pruners.ThresholdPruner,lower:2.0}",
]


def _search_command(tiny_demo: Path, tmp_path: Path, sweep_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "-m",
        "hparams_search=fusion_optuna",
        "hparams_search.n_trials=4",
        *fast_overrides(tiny_demo, tmp_path / "cache"),
        "trainer.max_epochs=2",
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
    ]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400
    )


def _study(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(
        study_name="fusion_optuna", storage=open_storage(f"sqlite:///{sweep_dir / 'optuna.db'}")
    )


def _trial_dirs(sweep_dir: Path) -> dict[int, Path]:
    return {json.loads(p.read_text())["number"]: p.parent for p in sweep_dir.glob("*/trial.json")}


def test_shipped_search_config_is_a_valid_search(tmp_path: Path) -> None:
    cfg = compose_config("train", "hparams_search=fusion_optuna", return_hydra_config=True)
    spec = SearchSpec.from_config(cfg.hparams_search, tmp_path)
    assert set(spec.params) == {
        "lr",
        "model.hidden_dim",
        "model.word_dim",
        "model.embed_dim",
        "data.batch_size",
        "model.dropout",
    }
    assert spec.params["lr"] == {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
    assert spec.storage == f"sqlite:///{tmp_path / 'optuna.db'}" and spec.direction == "maximize"
    assert spec.pruner["_target_"] == "optuna.pruners.MedianPruner" and spec.sampler["seed"] == cfg.seed
    assert cfg.hydra.sweep.dir == "multirun/search/fusion_optuna"
    plain = compose_config("train", "hparams_search=fusion_optuna", "hparams_search.pruner=none")
    assert SearchSpec.from_config(plain.hparams_search, tmp_path).pruner is None
    with pytest.raises(SearchError, match="hparams_search.params.lr="):
        SearchSpec.from_config(
            compose_config(
                "train", "hparams_search=fusion_optuna", "hparams_search.params.lr.type=uniform"
            ).hparams_search,
            tmp_path,
        )


def test_trial_folder_names_carry_number_and_values_without_override_syntax() -> None:
    name = trial_folder(7, {"lr": 0.00123456, "model.hidden_dim": 64, "model.dropout": 0.25})
    assert name == "trial-007_lr-0.00123_hidden_dim-64_dropout-0.25"
    assert "=" not in name and "," not in name
    assert trial_folder(7, {"lr": 0.1}, fold=2).endswith("_fold-2")


@pytest.mark.slow
def test_search_prunes_reports_and_refuses_another_space(tiny_demo: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "search"
    command = _search_command(tiny_demo, tmp_path, sweep_dir, *PRUNE_AFTER_ONE_EPOCH)
    result = _run(command)  # the shipped launcher: 2 trials side by side
    assert result.returncode == 0, result.stdout[-3000:]
    trials = _trial_dirs(sweep_dir)
    assert sorted(trials) == [0, 1, 2, 3]
    assert all(
        (folder / "config_resolved.yaml").is_file() and (folder / "metrics.json").is_file()
        for folder in trials.values()
    )
    states = [t.state for t in _study(sweep_dir).trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1 and optuna.trial.TrialState.FAIL not in states
    for (
        number,
        folder,
    ) in trials.items():  # pruned after the first epoch: one epoch trained, recorded as pruned
        assert json.loads((folder / "metrics.json").read_text())["epochs"] == 1
        assert json.loads((folder / "pruned.json").read_text())["epoch"] == 0, number
    report = (sweep_dir / "report.md").read_text()
    assert "## Search: study `fusion_optuna`" in report and "4 trials: 4 pruned" in report
    assert len((sweep_dir / "trials.csv").read_text().splitlines()) == 5  # header and the 4 trials
    best_line = next(line for line in report.splitlines() if line.startswith("python train.py"))
    f1s = {n: json.loads((f / "metrics.json").read_text())["val_samples_f1"] for n, f in trials.items()}
    best_folder = trials[max(f1s, key=f1s.__getitem__)]
    best_config = (best_folder / "config_resolved.yaml").read_text()
    assert f"model.hidden_dim={_value(best_config, 'hidden_dim')}" in best_line
    assert "hparams_search" not in best_line and "callbacks.optuna_pruning" not in best_line

    other_space = _run([*command, "hparams_search.params.lr.high=0.1"])
    assert other_space.returncode != 0
    assert "holds the study 'fusion_optuna' of another search (params differ" in other_space.stdout
    assert len(_study(sweep_dir).trials) == 4


def _value(config_text: str, key: str) -> str:
    line = next(line for line in config_text.splitlines() if line.strip().startswith(f"{key}:"))
    return line.split(":", 1)[1].strip()


@pytest.mark.slow
def test_killed_search_continues_from_its_storage(tiny_demo: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "search"
    command = _search_command(
        tiny_demo, tmp_path, sweep_dir, "hparams_search.pruner=none", "hydra.launcher.n_jobs=1"
    )
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while (
        len(list(sweep_dir.glob("*/metrics.json"))) < 2
        and process.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the search and its trial jobs, as a killed terminal would
    process.wait()
    first = {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")}
    assert len(first) == 2, first

    again = _run(command)
    assert again.returncode == 0, again.stdout[-3000:]
    study = _study(sweep_dir)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]  # interrupted ones kept their numbers
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for name, mtime in first.items():  # the two finished trials were not run again
        assert (sweep_dir / name / "metrics.json").stat().st_mtime_ns == mtime
    assert sorted(_trial_dirs(sweep_dir)) == [0, 1, 2, 3]
    report = (sweep_dir / "report.md").read_text()
    assert "4 trials: 4 complete" in report and "![optimisation history](optuna_history.png)" in report
    assert (sweep_dir / "optuna_history.png").is_file() and (sweep_dir / "optuna_importances.png").is_file()
    best = study.best_trial
    best_line = next(line for line in report.splitlines() if line.startswith("python train.py"))
    assert (
        f"lr={best.params['lr']!r}" in best_line
        and f"data.batch_size={best.params['data.batch_size']}" in best_line
    )
