"""Sweep expansion (points, one-at-a-time axes, command-line lists) and an end-to-end sweep with re-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CONF, REPO, compose_config, fast_overrides
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.mlcap_sweeper import MlcapSweeper, check_n_jobs
from mlcap.report import ReportCallback, sweep_paper
from mlcap.runs import resolved_task_config
from mlcap.settings import validate
from mlcap.sweep import (
    SweepJob,
    check_jobs,
    command_line_lists,
    expand_sweep,
    format_value,
    job_name,
    one_at_a_time,
    sweep_points,
)

# The expansion tests' own one-at-a-time grid (not a sweep file's): each key varied alone around BASE.
AXES = {"lr": [1e-3, 1e-2, 1e-1], "model.hidden_dim": [8, 16, 32], "data.batch_size": [16, 32]}
BASE = {"lr": 1e-2, "model.hidden_dim": 16, "data.batch_size": 32}
SWEEPS = sorted(path.stem for path in (CONF / "sweep").glob("*.yaml"))


def cli(*overrides: str) -> list[tuple[str, list[str]]]:
    return command_line_lists(OverridesParser.create().parse_overrides(list(overrides)))


def sweep_config(sweep: str) -> DictConfig:
    """conf/train.yaml with sweep=<sweep>, its hydra node (sweeper, sweep.dir, report callback) included."""
    return compose_config("train", f"sweep={sweep}", return_hydra_config=True)


def points_of(config: DictConfig) -> list[dict[str, Any]]:
    """A sweep config's points, its axes varied around the composed config's values (as the sweeper does)."""
    sweeper = config.hydra.sweeper
    axes = OmegaConf.to_container(sweeper.axes) if sweeper.get("axes") else None
    points = OmegaConf.to_container(sweeper.points) if sweeper.get("points") else None
    return sweep_points(points, axes, {key: OmegaConf.select(config, key) for key in axes or {}})


def test_one_at_a_time_runs_each_distinct_point_once() -> None:
    points = one_at_a_time(AXES, BASE)
    assert len(points) == 6  # the base, then 2 + 2 + 1 values that differ from it
    assert points[0] == {}  # the base model, once, not once per axis
    assert {"lr": 1e-3} in points and {"lr": 1e-2} not in points
    assert {"model.hidden_dim": 8} in points and {"model.hidden_dim": 16} not in points
    # A base value given with another spelling (0.01) or type (32.0) is still the base.
    assert len(one_at_a_time({"lr": [0.01, 1e-1], "data.batch_size": [32.0, 16]}, BASE)) == 3
    # True is not 1, and a key missing from the base config is never the base.
    assert one_at_a_time({"flag": [True]}, {"flag": 1}) == [{}, {"flag": True}]
    assert one_at_a_time({"new": [1, 1]}, {}) == [{}, {"new": 1}]


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_point_composes_to_a_valid_training_config(sweep: str) -> None:
    """A typo in a point's key or value must fail here, not hours into a sweep."""
    config = sweep_config(sweep)
    # mlcap's sweeper (named by its import path: Hydra loads plugins as modules of their own), not Hydra's
    assert config.hydra.sweeper._target_ == f"{MlcapSweeper.__module__}.{MlcapSweeper.__qualname__}"
    assert get_class(config.hydra.callbacks.report._target_) is ReportCallback  # report.md when it ends
    assert config.hydra.sweep.dir == f"multirun/{sweep}"  # each sweep its own folder, named after it
    for job in expand_sweep(cli(f"sweep={sweep}"), points_of(config)):
        cfg = compose_config("train", *job.overrides, "data=comp5329", f"data.root={REPO}")
        validate(cfg)  # every value is one its key allows
        for override in job.overrides[1:]:
            # A key, or a group (model/scheduler=onecycle fills model.scheduler).
            key = override.split("=", 1)[0].replace("/", ".")
            assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", (sweep, override)


def test_table_configs_expand_to_the_study_tables() -> None:
    table4 = sweep_config("table4")
    axes = OmegaConf.to_container(table4.hydra.sweeper.axes)
    for key, values in axes.items():  # the grid is centred on the config defaults, i.e. the best model
        assert OmegaConf.select(table4, key) in values, key
    jobs = expand_sweep(cli("sweep=table4"), points_of(table4))
    # The base once, then each key's other values.
    assert len(jobs) == 1 + sum(len(values) - 1 for values in axes.values())
    assert jobs[0] == SweepJob("base", ["sweep=table4"])
    # A table of points: one job per point, in the file's order, setting exactly that point.
    table1 = sweep_config("table1")
    points = OmegaConf.to_container(table1.hydra.sweeper.points)
    jobs = expand_sweep(cli("sweep=table1"), points_of(table1))
    assert [job.overrides[1:] for job in jobs] == [
        [f"{key}={format_value(key, value)}" for key, value in point.items()] for point in points
    ]


def test_study_sweep_runs_every_distinct_setting_of_the_four_tables_once() -> None:
    study = sweep_config("study")
    tables = {f"table{n}": sweep_config(f"table{n}") for n in (1, 2, 3, 4)}
    study_points = points_of(study)
    jobs = expand_sweep(cli("sweep=study", "seed=0,1,2"), study_points)
    assert len(jobs) == 3 * len(study_points) and len({job.name for job in jobs}) == len(jobs)
    # The tables' settings, each as it differs from the study's base (the tables' "with" rows are the base).
    table_points = [
        {key: value for key, value in point.items() if OmegaConf.select(study, key) != value}
        for table in tables.values()
        for point in points_of(table)
    ]
    assert all(point in study_points for point in table_points)  # every setting of every table ...
    assert all(point in table_points for point in study_points)  # ... and nothing else,
    assert all(study_points.count(point) == 1 for point in study_points)  # each once
    # The paper's figures of all four tables travel with the study, as each travels with its own table sweep;
    # its best model's (Tables 6-7) with the study and with Table 4, whose base point that model is.
    paper = study.hydra.callbacks.report.paper
    assert list(paper) == [*tables, "best"]
    for name, table in tables.items():
        carried = list(table.hydra.callbacks.report.paper)
        assert carried == ([name, "best"] if name == "table4" else [name])
        assert all(paper[key] == table.hydra.callbacks.report.paper[key] for key in carried)


@pytest.mark.parametrize("sweep", SWEEPS)
def test_report_reads_a_sweeps_paper_figures_as_hydra_composes_them(sweep: str) -> None:
    """`python -m mlcap.report --paper <sweep>` reads conf/ without Hydra; it must get what Hydra composes."""
    composed = OmegaConf.select(sweep_config(sweep), "hydra.callbacks.report.paper", default=None)
    assert sweep_paper(sweep) == (OmegaConf.to_container(composed) if composed is not None else {})


def test_seeds_and_command_line_lists_multiply_every_point() -> None:
    points = sweep_points(None, AXES, BASE)
    jobs = expand_sweep(cli("sweep=grid", "seed=0,1,2", "trainer.max_epochs=1"), points)
    assert len(jobs) == 18  # 6 points x 3 seeds
    assert len({job.name for job in jobs}) == 18
    assert jobs[0] == SweepJob("seed-0", ["sweep=grid", "seed=0", "trainer.max_epochs=1"])
    assert jobs[4].name == "lr-0.001+seed-1"
    assert jobs[4].overrides == ["sweep=grid", "seed=1", "trainer.max_epochs=1", "lr=0.001"]

    two = [{"model.attention": True}, {"model.attention": False}]
    jobs = expand_sweep(cli("seed=0,1", "trainer.max_epochs=1,2", "data=demo"), two)
    assert len(jobs) == 8  # 2 points x 2 seeds x 2 epoch settings
    assert jobs[-1].name == "model.attention-false+seed-1+trainer.max_epochs-2"
    assert all("data=demo" in job.overrides for job in jobs)


def test_command_line_value_of_an_axis_key_sets_the_base() -> None:
    base = {**BASE, "model.hidden_dim": 4}  # e.g. model.hidden_dim=4 on the command line
    jobs = expand_sweep(cli("model.hidden_dim=4"), sweep_points(None, AXES, base))
    assert len(jobs) == 7  # 8, 16 and 32 now all differ from the base
    varied = next(job for job in jobs if job.name == "model.hidden_dim-8")
    assert varied.overrides == ["model.hidden_dim=8"]  # the point replaces the command-line value
    assert jobs[0].overrides == ["model.hidden_dim=4"]


def test_command_line_list_over_a_varied_key_is_refused() -> None:
    with pytest.raises(ValueError, match="lr is swept on the command line"):
        expand_sweep(cli("lr=0.1,0.2"), sweep_points(None, AXES, BASE))
    with pytest.raises(ValueError, match="only comma lists"):
        command_line_lists(OverridesParser.create().parse_overrides(["lr=interval(0,1)"]))


def test_points_are_deduplicated_and_values_formatted_as_overrides() -> None:
    assert sweep_points([{"a": 1}, {"a": 1.0}, {"a": 2}], None) == [{"a": 1}, {"a": 2}]
    assert sweep_points(None, None) == [{}]
    assert format_value("model.caption", False) == "false"
    assert format_value("x", None) == "null"
    assert format_value("lr", 3.0e-4) == "0.0003"
    assert format_value("model.word_vectors", "word2vec_sg") == "word2vec_sg"
    assert format_value("name", "a,b") == "'a,b'"  # would otherwise be a sweep list
    assert format_value("name", "true") == "'true'"  # would otherwise be a bool
    assert format_value("data.image_size", [224, 320]) == "[224,320]"
    with pytest.raises(ValueError, match="values must be"):
        format_value("x", {"a": 1})
    with pytest.raises(ValueError, match="values must be"):
        format_value("x", ["a", "b"])


def test_command_line_values_are_written_as_config_text() -> None:
    """Folder names read like what users type: `false`, not Python's `False`; `0.003` for `3e-3`; quoted
    strings (paths with spaces) stay strings; the order the keys were typed in does not matter."""
    assert cli("model.attention=true,false", "lr=3e-3,3e-2", "trainer.enable_progress_bar=False") == [
        ("model.attention", ["model.attention=true", "model.attention=false"]),
        ("lr", ["lr=0.003", "lr=0.03"]),
        ("trainer.enable_progress_bar", ["trainer.enable_progress_bar=false"]),
    ]
    assert cli("model.word_vectors='fasttext_sg','word2vec_sg'", "data.root='/a b',/c") == [
        ("model.word_vectors", ["model.word_vectors=fasttext_sg", "model.word_vectors=word2vec_sg"]),
        ("data.root", ["data.root=/a b", "data.root=/c"]),  # one override each, as Hydra parses it
    ]
    one = expand_sweep(cli("lr=0.1,0.2", "model.attention=true,false"), [{}])
    other = expand_sweep(cli("model.attention=false,true", "lr=0.2,0.1"), [{}])
    assert sorted(job.name for job in one) == sorted(job.name for job in other)


def test_job_names_are_safe_folder_names() -> None:
    assert job_name([]) == "base"
    assert job_name(["model/image_encoder=small_cnn"]) == "model.image_encoder-small_cnn"
    assert job_name(["lr=0.0003", "seed=1"]) == "lr-0.0003+seed-1"
    odd = job_name(["data.root=/a b/c"])
    assert "/" not in odd and " " not in odd and odd != job_name(["data.root=/a_b/c"])
    assert job_name(["x=1+2"]) != job_name(["x=1", "2"])  # a value's `+` is not taken for a separator
    assert len(job_name([f"key{i}=value{i}" for i in range(50)])) <= 120


@pytest.mark.parametrize(
    "parts",
    [
        ["lr=0.0003", "seed=1"],
        ["lr=-1e-05"],
        ["model/image_encoder=small_cnn", "+extra=x"],
        ["data.root=/a b/c"],
        ["data.image_size=[224,320]"],
        ["model.attention=false", "x=null", "y=inf", "z=true", "w={a:1}"],
    ],
)
def test_job_folder_paths_are_unquoted_hydra_values(parts: list[str]) -> None:
    """Hydra reads `key=<any path through a job folder>` back as that path, unquoted (issue 19, finding 10)."""
    name = job_name(parts)
    for path in (
        name,
        f"multirun/x/{name}",
        f"/abs/multirun/2026-01-02_03-04-05_77/{name}/checkpoints/best.ckpt",
    ):
        (override,) = OverridesParser.create().parse_overrides([f"ckpt_path={path}"])
        assert override.value() == path


def test_a_folder_is_only_reused_for_the_same_config(tmp_path: Path) -> None:
    """Jobs are checked against the config recorded in their folder, whatever the overrides' order."""
    same, other, fresh = (
        SweepJob("a", ["seed=0", "lr=0.1"]),
        SweepJob("b", ["lr=0.2"]),
        SweepJob("c", ["lr=0.3"]),
    )

    def compose_job(overrides: list[str]) -> DictConfig:
        return compose_config("train", *(o for o in overrides if not o.startswith("hydra.")))

    for job, recorded in ((same, ["lr=0.1", "seed=0"]), (other, ["lr=0.2", "trainer.max_epochs=1"])):
        folder = tmp_path / job.name
        resolved = resolved_task_config(compose_job(recorded), folder)
        folder.mkdir()
        OmegaConf.save(OmegaConf.create(resolved), folder / "config_resolved.yaml")
    (tmp_path / "a" / "metrics.json").write_text("{}")
    planned = check_jobs(tmp_path, [same, fresh], compose_job)
    assert [(job.name, state) for job, state in planned] == [("a", "finished"), ("c", "empty")]
    with pytest.raises(ValueError, match=r"nothing was run: 1 of the 3 jobs") as caught:
        check_jobs(tmp_path, [same, other, fresh], compose_job)
    default_epochs = compose_job([]).trainer.max_epochs
    assert f"trainer.max_epochs (there 1, here {default_epochs})" in str(caught.value)
    assert "hydra.sweep.dir=<new folder>" in str(caught.value)
    # One config, one folder: a job named otherwise (keys reordered, a one-value list, 0 vs 0.0) goes to the
    # folder that holds its config, and a second job of the same config in one sweep is dropped.
    renamed = SweepJob("lr=0.1,seed=0", ["lr=0.1", "seed=0"])
    twin = SweepJob("c-again", ["lr=0.30"])
    planned = check_jobs(tmp_path, [renamed, fresh, twin], compose_job)
    assert [(job.name, state) for job, state in planned] == [("a", "finished"), ("c", "empty")]


def _sweep(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a sweep; Hydra logs to stdout and errors go to stderr, so both are merged into stdout."""
    return subprocess.run(
        [sys.executable, "train.py", "-m", *cmd],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_sweep_runs_in_parallel_then_rerun_skips_finished_jobs(tiny_demo: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "table2"
    command = [
        "sweep=table2",
        *fast_overrides(tiny_demo, tmp_path / "cache"),
        "trainer.max_epochs=1",
        "model/image_encoder=small_cnn",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    first = _sweep(command)  # the default launcher: 2 jobs side by side, the cores split between them
    assert first.returncode == 0, first.stdout[-3000:]
    jobs = sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json"))
    assert jobs == ["model.attention-false", "model.attention-true"]
    runs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    assert [run["threads"] for run in runs] == [max(1, len(os.sched_getaffinity(0)) // 2)] * 2
    # Side by side: the launcher says so (a timing check would flake under load, as two tiny jobs can each end
    # before the other's clock starts; test_sweep_signals finds both job processes alive at once).
    assert "launching 2 jobs, 2 side by side" in first.stdout
    report = (sweep_dir / "report.md").read_text()
    assert "2 jobs: 2 finished" in report and "`model.attention`" in report
    paper = OmegaConf.load(CONF / "paper" / "table2.yaml")  # the paper's figures beside ours
    assert f"### {paper.title}" in report
    assert all(f"| {row.val_samples_f1:.4g} " in report for row in paper.rows)
    assert (sweep_dir / "settings.csv").is_file() and (
        sweep_dir / "val_samples_f1_by_model.attention.png"
    ).is_file()
    mtimes = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")}

    (sweep_dir / "report.md").unlink()
    again = _sweep(command)  # the same command again: both jobs are found finished, nothing retrains
    assert again.returncode == 0, again.stdout[-3000:]
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")} == mtimes
    assert again.stdout.count("already finished with the same config, not launched again") == 2
    assert (sweep_dir / "report.md").is_file()

    changed = _sweep([*command, "trainer.max_epochs=2"])  # another config: the folders are refused
    assert changed.returncode != 0
    assert "trainer.max_epochs (there 1, here 2)" in changed.stdout
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")} == mtimes

    # A sweep killed mid-way: one job finished, the other stopped after its last checkpoint. The re-run
    # resumes that one from checkpoints/last.ckpt and leaves the finished one alone.
    interrupted = sweep_dir / "model.attention-false"
    (interrupted / "metrics.json").unlink()
    resumed = _sweep(command)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resuming the interrupted run" in resumed.stdout
    finished = sweep_dir / "model.attention-true" / "metrics.json"
    assert finished.stat().st_mtime_ns == mtimes[finished]
    assert (interrupted / "metrics.json").is_file()


def test_launcher_n_jobs_is_checked_before_any_job_starts(tmp_path: Path) -> None:
    for good in (-1, 1, 4):
        check_n_jobs(good)
    for bad, shown in ((0, "0"), (-2, "-2"), (True, "true"), (None, "null"), ("two", "'two'"), (1.5, "1.5")):
        with pytest.raises(
            ValueError, match=f"hydra.launcher.n_jobs={shown} is not allowed: it must be an integer"
        ):
            check_n_jobs(bad)
    cache = tmp_path / "cache"
    result = _sweep(
        [
            "seed=0,1",
            "hydra.launcher.n_jobs=0",
            f"paths.cache_dir={cache}",
            f"hydra.sweep.dir={tmp_path / 's'}",
        ]
    )
    assert result.returncode == 1, result.stdout[-3000:]
    assert (
        "error: hydra.launcher.n_jobs=0 is not allowed: it must be an integer, -1 (one job per core) or >= 1"
        in (result.stdout)
    )
    assert "Traceback" not in result.stdout and not cache.exists() and not (tmp_path / "s").exists()


def test_ddp_with_a_local_sweep_is_refused_before_any_job_starts(tmp_path: Path) -> None:
    """DDP starts processes of its own: a local launcher's jobs cannot host it (issue 19, finding 4)."""
    sweep_dir = tmp_path / "s"
    result = _sweep(
        ["trainer=ddp_cpu", "seed=0,1", f"paths.cache_dir={tmp_path}", f"hydra.sweep.dir={sweep_dir}"]
    )
    assert result.returncode == 1, result.stdout[-3000:]
    assert "trainer.strategy=ddp with trainer.devices=2 does not mix with -m" in result.stdout
    assert "Traceback" not in result.stdout and not sweep_dir.exists()
