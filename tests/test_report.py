"""Sweep report on synthetic multirun folders: statistics per setting, job states, files written."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import CONF
from omegaconf import OmegaConf

from mlcap.report import ReportCallback, load_jobs, main, one_at_a_time_tables, settings_table, varied_keys
from mlcap.report import write_report as write
from mlcap.sweep import SweepJob, write_plan

PER_CLASS = (
    "label,precision,recall,f1,support\n1,0.9,0.8,0.85,10\n2,0.5,0.4,0.45,5\nsamples avg,0.7,0.6,0.65,15\n"
)


def make_job(
    sweep: Path,
    name: str,
    num: int,
    config: dict[str, Any],
    overrides: list[str],
    metrics: dict[str, Any] | None = None,
    failed: str | None = None,
    last_ckpt: bool = False,
) -> Path:
    """A job folder as Hydra and train.py leave it."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": num}}}), job / ".hydra" / "hydra.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
        (job / "per_class.csv").write_text(PER_CLASS)
    if failed is not None:
        (job / "failed.json").write_text(json.dumps({"error": failed, "traceback": "Traceback ..."}))
    if last_ckpt:
        (job / "checkpoints").mkdir()
        (job / "checkpoints" / "last.ckpt").write_bytes(b"")
    return job


def config(attention: bool, seed: int, hidden: int = 128, lr: float = 3e-4) -> dict[str, Any]:
    return {
        "seed": seed,
        "lr": lr,
        "paths": {"output_dir": "${hydra:runtime.output_dir}"},
        "data": {"label_ids": [1, 2], "batch_size": 64},
        "model": {"attention": attention, "hidden_dim": hidden},
    }


def metrics(f1: float, size: float = 16.4, seconds: float = 30.0) -> dict[str, Any]:
    return {
        "val_samples_f1": f1,
        "val_loss": 1.0 - f1,
        "train_loss": 0.5 - f1 / 2,
        "model_size_mb": size,
        "under_100mb": size <= 100,
        "wall_time_s": seconds,
        "epochs": 3,
        **{f"val_{name}": f1 - 0.1 for name in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")},
    }


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """model.attention on/off x seeds 0-3: one failed job, one interrupted, one not started."""
    root = tmp_path / "table2"
    f1_on = {0: 0.5, 1: 0.6, 2: 0.7}
    for seed, f1 in f1_on.items():
        make_job(
            root,
            f"model.attention=true,seed={seed}",
            seed,
            config(True, seed),
            ["sweep=table2", f"seed={seed}", "model.attention=true"],
            metrics(f1, seconds=20 + 10 * seed),
        )
    make_job(
        root,
        "model.attention=false,seed=0",
        3,
        config(False, 0),
        ["sweep=table2", "seed=0", "model.attention=false"],
        metrics(0.4, size=150.0),
    )
    make_job(
        root,
        "model.attention=false,seed=1",
        4,
        config(False, 1),
        ["sweep=table2", "seed=1", "model.attention=false"],
        failed="RuntimeError: CUDA out of memory",
    )
    make_job(
        root,
        "model.attention=false,seed=2",
        5,
        config(False, 2),
        ["sweep=table2", "seed=2", "model.attention=false"],
        last_ckpt=True,
    )
    order = sorted(root.iterdir(), key=lambda p: OmegaConf.load(p / ".hydra" / "hydra.yaml").hydra.job.num)
    planned = [
        SweepJob(p.name, OmegaConf.to_container(OmegaConf.load(p / ".hydra" / "overrides.yaml")))
        for p in order
    ]
    planned.append(
        SweepJob("model.attention=false,seed=3", ["sweep=table2", "seed=3", "model.attention=false"])
    )
    write_plan(root, planned, axes=[])
    return root


def test_jobs_are_found_with_their_state(sweep: Path) -> None:
    records = load_jobs(sweep)
    assert len(records) == 7
    jobs = {job.name: job for job in records}
    assert jobs["model.attention=true,seed=1"].status == "finished"
    assert jobs["model.attention=false,seed=1"].status == "failed"
    assert "CUDA out of memory" in jobs["model.attention=false,seed=1"].error
    assert jobs["model.attention=false,seed=2"].status == "unfinished"
    assert "last.ckpt" in jobs["model.attention=false,seed=2"].error
    assert jobs["model.attention=false,seed=3"].status == "not started"
    assert varied_keys(records) == ["model.attention"]  # seed and constant keys excluded


def test_settings_table_has_mean_std_and_n_over_seeds(sweep: Path) -> None:
    jobs = load_jobs(sweep)
    table = settings_table(jobs, varied_keys(jobs)).set_index("model.attention")
    on, off = table.loc[True], table.loc[False]
    assert on["n"] == 3 and on["seeds"] == "0 1 2"
    assert on["val_samples_f1_mean"] == pytest.approx(0.6)
    assert on["val_samples_f1_std"] == pytest.approx(0.1)  # sample std over seeds
    assert on["val_loss_mean"] == pytest.approx(0.4)
    assert on["train_loss_mean"] == pytest.approx(0.2)
    assert on["wall_time_s_mean"] == pytest.approx(30.0)
    assert not on["over_size_limit"]
    assert off["n"] == 1 and off["failed"] == 1 and off["unfinished"] == 1
    assert off["val_samples_f1_mean"] == pytest.approx(0.4) and pd.isna(off["val_samples_f1_std"])
    assert off["over_size_limit"]


def test_report_files(sweep: Path) -> None:
    report = write(sweep).read_text()
    assert "7 jobs: 4 finished, 1 failed, 1 unfinished, 1 not started" in report
    assert "| true " in report and "**0.6000 ± 0.0500**" not in report
    assert "**0.6000 ± 0.1000**" in report  # best setting in bold
    assert "0.4000" in report and "150.0 ⚠ over 100 MB" in report
    assert "1 (+1 failed, 1 unfinished)" in report
    assert "## Failed jobs" in report and "RuntimeError: CUDA out of memory" in report
    assert "model.attention=false,seed=2" in report and "model.attention=false,seed=3" in report
    assert "Overrides common to all jobs: `sweep=table2`" in report
    assert "`model.attention=true,seed=2`: val samples-F1 0.7000" in report  # the best single run
    for name in (
        "jobs.csv",
        "settings.csv",
        "best_per_class.csv",
        "best_per_class.png",
        "val_samples_f1_by_model.attention.png",
    ):
        assert (sweep / name).stat().st_size > 0, name
    settings = pd.read_csv(sweep / "settings.csv")
    assert list(settings["n"]) == [3, 1]
    # The field's metrics beside samples-F1: all seven in the CSVs, mAP, CF1 and OF1 in report.md.
    assert settings["val_CP_mean"].tolist() == pytest.approx([0.5, 0.3])
    header = next(line for line in report.splitlines() if "val samples-F1" in line and line.startswith("|"))
    assert "val mAP" in header and "val CF1" in header and "val OF1" in header
    assert "0.5000 ± 0.1000" in report
    jobs = pd.read_csv(sweep / "jobs.csv")
    assert list(jobs["status"]).count("failed") == 1 and len(jobs) == 7


def test_one_at_a_time_grid_gets_one_table_per_key(tmp_path: Path) -> None:
    root = tmp_path / "table4"
    points = [(128, 3e-4), (32, 3e-4), (64, 3e-4), (128, 3e-3), (128, 3e-2)]
    for num, (hidden, lr) in enumerate(points):
        for seed in (0, 1):
            name = f"{num}-{seed}"
            make_job(
                root,
                name,
                2 * num + seed,
                config(True, seed, hidden=hidden, lr=lr),
                [f"seed={seed}"],
                metrics(0.5 + num / 100 + seed / 100),
            )
    write_plan(root, [], axes=["lr", "model.hidden_dim"])
    jobs = load_jobs(root)
    settings = settings_table(jobs, varied_keys(jobs))
    assert len(settings) == 5
    tables = one_at_a_time_tables(settings, ["lr", "model.hidden_dim"])
    assert list(tables["model.hidden_dim"]["model.hidden_dim"]) == [32, 64, 128]  # sorted, base included
    assert list(tables["lr"]["lr"]) == [3e-4, 3e-3, 3e-2]
    assert list(tables["lr"]["base"]) == [True, False, False]
    assert list(tables["lr"]["n"]) == [2, 2, 2]

    report = write(root).read_text()  # the plan has axes: one-at-a-time layout
    assert "### `lr`" in report and "### `model.hidden_dim`" in report
    assert report.index("### `lr`") < report.index("### `model.hidden_dim`")  # the sweep's axis order
    for name in ("settings_lr.csv", "settings_model.hidden_dim.csv", "val_samples_f1_by_lr.png"):
        assert (root / name).is_file(), name
    flat = write(root, layout="flat").read_text()
    assert "### `lr`" not in flat and (root / "val_samples_f1_by_setting.png").is_file()


def test_cli_and_callback(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep)]) == 0
    assert capsys.readouterr().out.strip() == str(sweep / "report.md")
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "holds no job folders" in capsys.readouterr().err
    (sweep / "report.md").unlink()
    # The report is written, then the command exits non-zero: jobs of this sweep did not finish.
    with pytest.raises(SystemExit, match=r"error: 3 of 7 jobs did not finish: .*seed=1 \(failed\)"):
        ReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "report.md").is_file()


def test_metrics_with_nan_are_refused_not_averaged(sweep: Path) -> None:
    (sweep / "model.attention=true,seed=1" / "metrics.json").write_text('{"val_samples_f1": NaN}')
    with pytest.raises(
        ValueError, match=r"seed=1/metrics.json: cannot read it as strict JSON \(NaN is not JSON"
    ):
        write(sweep)


def test_broken_metrics_file_is_named(sweep: Path) -> None:
    (sweep / "model.attention=true,seed=0" / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"seed=0/metrics.json: cannot read it as strict JSON"):
        load_jobs(sweep)


# The study's Table 2 as the sweeps carry it (conf/paper/table2.yaml).
PAPER_TABLE2 = {"table2": OmegaConf.to_container(OmegaConf.load(CONF / "paper" / "table2.yaml"))}


def test_the_papers_figures_stand_beside_ours(sweep: Path) -> None:
    table = PAPER_TABLE2["table2"]
    report = write(sweep, paper=PAPER_TABLE2).read_text()
    section = report.split(f"### {table['title']}")[1].split("##")[0]
    rows = {
        line.split("|")[1].strip(): line.split("|") for line in section.splitlines() if line.startswith("| ")
    }
    ours = {True: (3, "0.6000 ± 0.1000", 0.6), False: (1, "0.4000", 0.4)}  # the sweep fixture's F1 over seeds
    for paper in table["rows"]:
        (attention,) = paper["setting"].values()
        n, shown, mean = ours[attention]
        cells = rows[f"{paper['name']} (`model.attention={str(attention).lower()}`)"]
        # n | paper | ours (mean ± std over seeds) | ours - paper
        paper_f1 = paper["val_samples_f1"]
        assert [c.strip() for c in cells[2:6]] == [
            str(n),
            f"{paper_f1:.4g}",
            shown,
            f"{mean - paper_f1:+.4f}",
        ]
    assert "the study's own reported figures" in report


def test_the_paper_comes_from_the_sweeps_own_config(sweep: Path) -> None:
    """`python -m mlcap.report <dir>` finds the paper's tables in the multirun.yaml the sweeper saved."""
    OmegaConf.save(
        OmegaConf.create({"hydra": {"callbacks": {"report": {"paper": PAPER_TABLE2}}}}),
        sweep / "multirun.yaml",
    )
    assert f"### {PAPER_TABLE2['table2']['title']}" in write(sweep).read_text()
    (sweep / "multirun.yaml").unlink()
    assert PAPER_TABLE2["table2"]["title"] not in write(sweep).read_text()


# The study's best model as sweep=study and sweep=table4 carry it (conf/paper/best.yaml).
PAPER_BEST = {"best": OmegaConf.to_container(OmegaConf.load(CONF / "paper" / "best.yaml"))}


def _section(report: str, title: str) -> dict[str, list[str]]:
    """A report table's rows by their first cell, cells stripped."""
    section = report.split(title)[1].split("\n#")[0]
    rows = [
        [c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines() if line.startswith("| ")
    ]
    return {row[0]: row[1:] for row in rows}


def test_the_papers_best_model_stands_beside_our_best_setting(sweep: Path) -> None:
    # The best setting (attention on, seeds 0-2): label 2's F1 differs by seed, label 12 never occurs.
    for seed, f1_2 in ((0, 0.4), (1, 0.5), (2, 0.6)):
        (sweep / f"model.attention=true,seed={seed}" / "per_class.csv").write_text(
            "label,precision,recall,f1,support\n1,0.9,0.8,0.85,10\n"
            f"2,0.5,0.4,{f1_2},5\n12,0.0,0.0,0.0,0\nmicro avg,0.8,0.7,0.75,15\nsamples avg,0.7,0.6,0.65,15\n"
        )
    report = write(sweep, paper={**PAPER_TABLE2, **PAPER_BEST}).read_text()
    best = PAPER_BEST["best"]
    assert "## The study's best model beside ours" in report and "the study's own claims" in report
    assert "`model.attention=true`: mean ± sample std over its 3 finished seed(s) (0 1 2)" in report
    assert f"### {best['title']}" not in report  # not shown as one of the study's tables

    per_class = _section(report, "### Per-class F1")
    assert per_class["label"] == ["support (ours)", "F1: paper", "F1: ours", "ours − paper"]
    # label 2: the paper's 0.57 beside ours, mean 0.5 ± std 0.1 over seeds, and ours - paper
    assert per_class["2"] == ["5", "0.57", "0.5000 ± 0.1000", "-0.0700"]
    assert per_class["1"] == ["10", "0.94", "0.8500 ± 0.0000", "-0.0900"]
    assert per_class["12"] == ["0", "0.00", "no positives", "—"]  # no F1 of ours to compare
    assert per_class["19"] == ["—", "0.92", "not in our data", "—"]  # matched by label id, not position
    assert len(per_class) == 1 + 19

    averages = _section(report, "### Precision / recall / F1 averages")
    assert averages["samples f1"] == ["0.87", "0.6000 ± 0.1000", "-0.2700"]  # metrics.json's val_samples_f1
    assert averages["micro f1"] == ["0.84", "0.7500 ± 0.0000", "-0.0900"]  # per_class.csv's micro avg row
    assert averages["macro precision"] == ["0.86", "—", "—"]  # neither file has it

    costs = _section(report, "### Run time and size")
    assert costs["run time (wall, mean per run)"] == ["39.0 min", "30 s", "-38.5 min"]
    assert costs["model size MB (limit 100)"] == ["96.39", "16.4", "-80.0"]
    assert costs["Kaggle F1 (public 20% of the test set)"][0] == "0.86299"
    assert "### Table 2: attention" in report  # the tables' figures still shown


def test_no_best_model_section_without_the_papers_figures(sweep: Path) -> None:
    assert "The study's best model" not in write(sweep, paper=PAPER_TABLE2).read_text()


def test_the_best_model_section_compares_like_for_like_else_names_the_difference(sweep: Path) -> None:
    """Ours is the setting holding the paper's best model's values, even where another scores higher;
    without one, the best setting, with how it differs from the paper's."""
    paper = {"best": {**PAPER_BEST["best"], "setting": {"model.attention": False, "lr": 3e-4}}}
    report = write(sweep, paper=paper).read_text()
    section = " ".join(report.split("## The study's best model beside ours")[1].split("\n## ")[0].split(" "))
    section = re.sub(r" +", " ", section)
    assert "Ours are this sweep's runs of the same setting, `model.attention=false`" in section
    assert "| samples f1 | 0.87 | 0.4000 | -0.4700 |" in section  # the attention=false job, not the 0.6
    paper = {"best": {**PAPER_BEST["best"], "setting": {"model.attention": False, "lr": 1.0}}}
    report = write(sweep, paper=paper).read_text()
    assert "Ours are this sweep's best setting by mean val samples-F1, `model.attention=true`" in report
    assert (
        "differs from the paper's best model (its Table 5) in `model.attention=true (the paper's false)`"
        in report
    )


def test_cli_takes_the_papers_figures_from_a_sweep_config(
    sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An old sweep folder: its multirun.yaml predates the best model's figures; its sweep config has them."""
    OmegaConf.save(
        OmegaConf.create(
            {
                "hydra": {
                    "callbacks": {"report": {"paper": PAPER_TABLE2}},
                    "runtime": {"choices": {"sweep": "table4"}},
                }
            }
        ),
        sweep / "multirun.yaml",
    )
    assert main([str(sweep)]) == 0  # default: the saved figures, plus those sweep=table4 carries now
    report = (sweep / "report.md").read_text()
    assert "### Table 2: attention" in report and "### Table 4" in report
    assert "## The study's best model beside ours" in report
    assert main([str(sweep), "--paper", "none"]) == 0
    report = (sweep / "report.md").read_text()
    assert "The study's best model" not in report and "### Table 2" not in report
    assert main([str(sweep), "--paper", "study"]) == 0
    report = (sweep / "report.md").read_text()
    assert all(f"### Table {n}" in report for n in (1, 2, 3, 4)) and "## The study's best model" in report
    capsys.readouterr()
    assert main([str(sweep), "--paper", "table9"]) == 2
    assert "no sweep config" in capsys.readouterr().err


def test_invalid_metrics_are_listed_as_invalid_never_finished_or_best(sweep: Path) -> None:
    """Issue 19, finding 8: a metrics.json of {} or with an F1 of 7.5 is no finished run's result."""
    empty = sweep / "model.attention=true,seed=0" / "metrics.json"
    empty.write_text("{}")
    huge = sweep / "model.attention=true,seed=1" / "metrics.json"
    huge.write_text(json.dumps(metrics(7.5)))
    jobs = {job.name: job for job in load_jobs(sweep)}
    assert jobs["model.attention=true,seed=0"].status == "invalid results"
    assert jobs["model.attention=true,seed=0"].error.startswith(
        f"{empty}: no val_samples_f1 or val_CIDEr-D in it"
    )
    assert jobs["model.attention=true,seed=1"].error.startswith(
        f"{huge}: val_samples_f1 is 7.5, outside [0, 1]"
    )
    assert "Delete it and re-run" in jobs["model.attention=true,seed=1"].error
    report = write(sweep).read_text()
    assert "7 jobs: 2 finished, 1 failed, 2 invalid results, 1 unfinished, 1 not started" in report
    assert "7.5" not in report.split("## Failed jobs")[0]  # neither averaged nor bolded
    assert "**0.7000" in report  # the only finished attention=true run is the best
    failed = report.split("## Failed jobs")[1].split("## ")[0]
    assert (
        "val_samples_f1 is 7.5, outside [0, 1]" in failed
        and "no val_samples_f1 or val_CIDEr-D in it" in failed
    )
    settings = pd.read_csv(sweep / "settings.csv")
    on = settings[settings["model.attention"]].iloc[0]
    assert (on["n"], on["failed"]) == (1, 2)
    for bad, reason in (
        ({**metrics(0.5), "val_CF1": -0.1}, "val_CF1 is -0.1, outside [0, 1]"),
        ({**metrics(0.5), "val_loss": "low"}, "val_loss is 'low', not a finite number"),
        ({**metrics(0.5), "val_samples_f1": 1e999}, "val_samples_f1 is inf, not a finite number"),
        ({**metrics(0.5), "wall_time_s": -3}, "wall_time_s is -3, below 0"),
    ):
        huge.write_text(json.dumps(bad).replace("Infinity", "1e999"))
        assert reason in {job.name: job for job in load_jobs(sweep)}["model.attention=true,seed=1"].error


def test_a_parent_of_several_sweeps_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19, finding 8: `python -m mlcap.report multirun` would merge unrelated sweeps into one report."""
    parent = tmp_path / "multirun"
    for sweep_name, lr in (("a", 3e-4), ("b", 3e-3)):
        sweep = parent / sweep_name
        make_job(sweep, "seed-0", 0, config(True, 0, lr=lr), ["seed=0"], metrics(0.5))
        (sweep / "multirun.yaml").write_text("hydra: {}\n")
    assert main([str(parent)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {parent} holds 2 sweeps ({parent / 'a'}, {parent / 'b'})")
    assert f"python -m mlcap.report {parent / 'a'}" in error and error.count("\n") == 1
    assert not (parent / "report.md").exists()
    assert main([str(parent / "a")]) == 0  # each on its own
