"""Trustworthy runs: a run folder, its config and its results always agree (issue 11).

Re-runs of plain sweeps and single runs, runs started together, settings checked before any work, NaN
losses, strict result files, and what TensorBoard's HPARAMS tab receives (read back through TensorBoard's
own event reader and hparams protos).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, compose_config, fast_overrides
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from mlcap.checkpoints import CheckpointError
from mlcap.models.parts import check_parts
from mlcap.predict import check_tta, predict, predict_device
from mlcap.runs import RunFolderError, check_folder, differences, folder_in_use, lock_folder, write_json
from mlcap.settings import SettingsError, validate
from mlcap.train import train

TRAIN = str(REPO / "train.py")


def _cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python <script> ...` in a subprocess; Hydra logs to stdout, errors go to stderr: both are merged."""
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


def _train_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return _cli(TRAIN, *args, cwd=cwd)


def _quick(tiny_demo: Path, tmp_path: Path) -> list[str]:
    return [
        *fast_overrides(tiny_demo, tmp_path / "cache"),
        "trainer.max_epochs=1",
        "model/image_encoder=small_cnn",
    ]


def _recorded(folder: Path, key: str) -> tuple[object, object]:
    """A key's value in Hydra's saved config and in mlcap's record of the run."""
    hydra_saved = OmegaConf.load(folder / ".hydra" / "config.yaml")
    record = OmegaConf.load(folder / "config_resolved.yaml")
    return OmegaConf.select(hydra_saved, key), OmegaConf.select(record, key)


def _mtimes(folder: Path, pattern: str) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.glob(pattern)}


def _hparams_logged(run: Path) -> tuple[list[tuple[str, bool]], dict[str, object], float]:
    """What TensorBoard reads from a run folder: (hparam name, differs) in order, this run's values, hp metric."""
    events = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    content = events.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content
    experiment = metadata.parse_experiment_plugin_data(content)
    start = metadata.parse_session_start_info_plugin_data(
        events.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content
    )
    values = {
        k: v.number_value if v.HasField("number_value") else v.string_value for k, v in start.hparams.items()
    }
    metric = events.Scalars("hp/best_val_samples_f1")[-1].value
    return [(h.name, h.differs) for h in experiment.hparam_infos], values, metric


def test_plain_sweep_names_folders_after_settings_and_reruns_never_relabel(
    tiny_demo: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    quick = _quick(tiny_demo, tmp_path)
    first = _train_cli("-m", "lr=3e-4,3e-3", *quick, f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stdout[-3000:]
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["lr-0.0003", "lr-0.003"]
    for name, lr in (("lr-0.0003", 3e-4), ("lr-0.003", 3e-3)):
        assert _recorded(sweep / name, "lr") == (lr, lr)
    report = (sweep / "report.md").read_text()  # a plain sweep gets its report too
    assert "2 jobs: 2 finished" in report and "`lr`" in report

    # TensorBoard: the varied key first and marked as differing, the public keys beside it, no constants of
    # the callbacks' config; each run carries its own value and its final F1.
    hparams, values, metric = _hparams_logged(sweep / "lr-0.003")
    assert hparams[0] == ("lr", True)
    names = {name for name, _ in hparams}
    assert {"model.attention", "model.hidden_dim", "data.batch_size", "seed"} <= names
    assert not any(name.startswith(("callbacks", "trainer.enable")) for name in names)
    assert [name for name, differs in hparams if differs] == ["lr"]
    assert values["lr"] == pytest.approx(3e-3) and values["model.attention"] == "true"
    metrics = json.loads((sweep / "lr-0.003" / "metrics.json").read_text())
    assert metric == pytest.approx(metrics["val_samples_f1"])
    assert OmegaConf.load(sweep / "lr-0.003" / "hparams.yaml")["lr"] == pytest.approx(3e-3)

    # The same sweep with its values reordered: each job is found finished in its own folder.
    done = _mtimes(sweep, "*/metrics.json") | _mtimes(sweep, "*/.hydra/config.yaml")
    again = _train_cli("-m", "lr=3e-3,3e-4", *quick, f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stdout[-3000:]
    assert again.stdout.count("already finished with the same config") == 2
    assert _mtimes(sweep, "*/metrics.json") | _mtimes(sweep, "*/.hydra/config.yaml") == done

    # Another setting into the same folders: refused before anything runs, naming the key.
    changed = _train_cli("-m", "lr=3e-3,3e-4", *quick, "model.hidden_dim=8", f"hydra.sweep.dir={sweep}")
    assert changed.returncode != 0
    assert "nothing was run" in changed.stdout and "model.hidden_dim (there 16, here 8)" in changed.stdout
    assert _mtimes(sweep, "*/metrics.json") | _mtimes(sweep, "*/.hydra/config.yaml") == done
    assert _recorded(sweep / "lr-0.0003", "model.hidden_dim") == (16, 16)


def test_single_run_rerun_with_another_setting_is_refused(tiny_demo: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    quick = _quick(tiny_demo, tmp_path)
    assert _train_cli(*quick, "lr=3e-4", f"hydra.run.dir={run}").returncode == 0
    done = _mtimes(run, "**/*")
    changed = _train_cli(*quick, "lr=0.03", f"hydra.run.dir={run}")
    assert changed.returncode == 1
    assert "holds a finished run of another config" in changed.stdout
    assert "lr (there 0.0003, here 0.03)" in changed.stdout
    assert _mtimes(run, "**/*") == done  # .hydra/ included: nothing was rewritten
    assert _recorded(run, "lr") == (3e-4, 3e-4)
    typed_otherwise = reversed({o.split("=")[0]: o for o in quick}.values())  # last value of each key wins
    same = _train_cli(*typed_otherwise, "lr=0.0003", f"hydra.run.dir={run}")  # the same config
    assert same.returncode == 0 and "finished (val samples-F1" in same.stdout
    log = run / "train.log"  # the skip is logged; everything else, .hydra/ included, is as the run left it
    assert {p: t for p, t in _mtimes(run, "**/*").items() if p != log} == {
        p: t for p, t in done.items() if p != log
    }
    assert "finished (val samples-F1" in log.read_text()


def test_interrupted_run_resumes_only_with_its_own_config(compose_train: Callable[..., DictConfig]) -> None:
    cfg = compose_train("trainer.max_epochs=2")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    (run / "metrics.json").unlink()  # stopped after its last checkpoint, before the results
    with pytest.raises(RunFolderError, match=r"interrupted \(resumable\) run of another config.*lr \(there"):
        train(compose_train("trainer.max_epochs=2", "lr=0.03"))
    assert not (run / "metrics.json").exists()
    # Keys that only say where files go or how fast they are made may differ.
    resumed = train(
        compose_train("trainer.max_epochs=2", "data.num_workers=1", "trainer.enable_model_summary=true")
    )
    assert resumed["epochs"] == 2


def test_resume_starts_from_the_last_epoch_not_the_best(compose_train: Callable[..., DictConfig]) -> None:
    """last.ckpt is the last epoch's even when the best one is older (Lightning's save_last is not)."""
    cfg = compose_train("trainer.max_epochs=3", "lr=1e-12", "model.batch_norm=false")  # F1 never improves
    metrics = train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert metrics["best_epoch"] == 0 and metrics["epochs"] == 3
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["epoch"] == 2
    assert torch.load(checkpoints / "best.ckpt", weights_only=False)["epoch"] == metrics["best_epoch"]


def test_a_single_run_is_refused_a_sweeps_folder(tmp_path: Path) -> None:
    (tmp_path / "sweep_plan.json").write_text('{"jobs": []}')
    with pytest.raises(RunFolderError, match="is a sweep's folder"):
        check_folder(tmp_path, {})


def test_two_runs_started_together_get_folders_of_their_own(tiny_demo: Path, tmp_path: Path) -> None:
    quick = _quick(tiny_demo, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, TRAIN, *quick, f"seed={seed}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    runs = sorted((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 2
    seeds = sorted(OmegaConf.load(run / "config_resolved.yaml")["seed"] for run in runs)
    assert seeds == [0, 1] and all((run / "metrics.json").is_file() for run in runs)


def test_a_key_added_later_with_a_null_default_keeps_old_folders_usable() -> None:
    assert differences({"lr": 3e-4}, {"lr": 3e-4, "model.image_encoder.weights": None}) == []
    assert differences({"lr": 3e-4}, {"lr": 3e-4, "model.x": 2}) == [("model.x", "<absent>", 2)]
    assert (
        differences({"a": True}, {"a": 1}) == [("a", True, 1)]
        and differences({"a": 3e-4}, {"a": 0.0003}) == []
    )
    assert differences({"data.label_ids": [1, 2]}, {}) == [("data.label_ids", [1, 2], "<absent>")]


def test_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    """Another live process holding the folder (its lock) keeps this one out; the same process may re-enter."""
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; from mlcap.runs import lock_folder; "
            f"lock_folder(Path({str(folder)!r})); print('held', flush=True); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match="another mlcap process is writing to"):
            lock_folder(folder)
        assert folder_in_use(folder)
    finally:
        holder.communicate("\n", timeout=30)
    assert not folder_in_use(folder)  # free again once that process ended
    mine = lock_folder(folder)
    lock_folder(folder).release()  # re-entered, not refused
    mine.release()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lr=abc"], "lr='abc' is not allowed: it must be a number"),
        (["data.batch_size=1.5"], "data.batch_size=1.5 is not allowed: it must be an integer"),
        (["data.batch_size=1"], "data.batch_size=1 is not allowed: it must be >= 2"),
        (["model.attention=maybe"], "model.attention='maybe' is not allowed: it must be true or false"),
        (["threshold=1.5"], "threshold=1.5 is not allowed: it must be > 0.0 and < 1.0"),
        (["threshold=-0.5"], "threshold=-0.5 is not allowed"),
        (["data.cache_views=0"], "data.cache_views=0 is not allowed: it must be >= 1 and <= 4"),
        (["data.val_fraction=1"], "data.val_fraction=1.0 is not allowed"),
        (
            ["threshold_calibration=bogus"],
            "threshold_calibration='bogus' is not allowed: it must be one of none, global, per_class",
        ),
        (["model.rnn=transformer"], "model.rnn='transformer' is not allowed: it must be one of gru, lstm"),
        (
            ["model/image_encoder=small_cnn", "model.image_encoder.name=effnet"],
            "model.image_encoder.name='effnet'",
        ),
        (["tta=true", "data.cache_views=1"], "tta=true averages the cached flip views"),
        (["tta=true", "model/image_encoder=small_cnn"], "model.image_encoder.freeze=true"),
        (
            ["model.sentence_trainable_layers=2"],
            "but model.text_encoder=rnn has none; set model.text_encoder=sentence or rnn+sentence",
        ),
        (
            ["model.text_encoder=gru"],
            "model.text_encoder='gru' is not allowed: it must be one of rnn, sentence, rnn+sentence",
        ),
        (
            ["model.loss=asl"],
            "model.loss='asl' is not allowed: choose it with model/loss=asl (a config group",
        ),
        (
            ["model.scheduler=onecycle"],
            "model.scheduler='onecycle' is not allowed: choose it with model/scheduler=onecycle",
        ),
        (
            ["model.optimizer.weight_decay=-1"],
            "model.optimizer.weight_decay=-1.0 is not allowed: it must be >= 0.0",
        ),
        (
            ["model.optimizer._partial_=false"],
            "model.optimizer._partial_=false is not allowed: it must be true",
        ),
        (["data=comp5329"], "data.root is required"),
        (
            ["data=comp5329", "data.root=/no/such/folder"],
            "data.root='/no/such/folder' is not allowed: there is no such folder",
        ),
        (["ckpt_path=/no/such.ckpt"], "ckpt_path='/no/such.ckpt' is not allowed: there is no such file"),
        (["model.attention=1"], "model.attention=1 is not allowed: it must be true or false"),
        (["lr=inf"], "lr=inf is not allowed: it must be a finite number"),
        (["+model.foo=1"], "model.foo is not a setting of model"),
        (["tta=true", "data.cache=false"], "(got data.cache=false, model.image_encoder.freeze=true"),
        (
            ["data.image_size=-5"],
            "data.image_size=-5 is not allowed: it must be null, a positive integer or [height, width]",
        ),
        (["data.image_size=[224,320,3]"], "data.image_size=[224, 320, 3] is not allowed"),
        (
            ["model/loss=weighted_bce", "model.loss.cap=-5"],
            "model.loss.cap=-5.0 is not allowed: it must be > 0.0",
        ),
        (
            ["model/loss=asl", "model.loss.gamma_neg=-1"],
            "model.loss.gamma_neg=-1.0 is not allowed: it must be >= 0.0",
        ),
        (["model/loss=asl", "model.loss.gamma_pos=-1"], "model.loss.gamma_pos=-1.0 is not allowed"),
        (
            ["model/loss=asl", "model.loss.gamma_neg=abc"],
            "model.loss.gamma_neg='abc' is not allowed: it must be a number",
        ),
        (
            ["model/loss=asl", "model.loss.clip=1"],
            "model.loss.clip=1.0 is not allowed: it must be >= 0.0 and < 1.0",
        ),
        (
            ["model/scheduler=onecycle", "model.scheduler.pct_start=2"],
            "model.scheduler.pct_start=2.0 is not allowed: it must be > 0.0 and < 1.0",
        ),
        (
            ["model.optimizer.lr=0.001"],
            "model.optimizer.lr=0.001 is not allowed: it follows lr (here 0.0003); set lr=0.001, the one "
            "learning-rate key",
        ),
    ],
)
def test_bad_settings_name_the_key_the_value_and_what_is_allowed(overrides: list[str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        validate(compose_config("train", *overrides))
    assert message in str(caught.value)


def test_the_parts_own_settings_pass_where_allowed() -> None:
    for overrides in (
        ["model/loss=asl", "model.loss.clip=null", "model.loss.gamma_neg=0"],
        ["model/loss=weighted_bce", "model.loss.cap=1"],
        ["model/scheduler=onecycle", "model.scheduler.pct_start=0.5"],
        ["lr=0.01", "model.optimizer.lr=0.01"],
    ):
        validate(compose_config("train", *overrides))
        check_parts(compose_config("train", *overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model/scheduler=onecycle", "+model.scheduler.foo=1"],
            "model.scheduler=torch.optim.lr_scheduler.OneCycleLR(pct_start=0.1, foo=1) is not allowed: TypeError: "
            "OneCycleLR.__init__() got an unexpected keyword argument 'foo'",
        ),
        (
            ["+model.loss.foo=1"],
            "model.loss=torch.nn.BCEWithLogitsLoss(foo=1) is not allowed: TypeError: BCEWithLogitsLoss.__init__() got "
            "an unexpected keyword argument 'foo'",
        ),
        (["model/loss=weighted_bce", "+model.loss.foo=1"], "model.loss=mlcap.models.losses.weighted_bce("),
        (
            ["+model.optimizer.betas=[0.9]"],
            "model.optimizer=torch.optim.Adam(lr=0.0003, weight_decay=0.0, betas=[0.9]) is not allowed: "
            "ConfigIndexError: list index out of range",
        ),
        (
            ["model.optimizer._target_=torch.optim.SGD", "+model.optimizer.momentum=-1"],
            "model.optimizer=torch.optim.SGD(lr=0.0003, weight_decay=0.0, momentum=-1) is not allowed: ValueError: "
            "Invalid momentum value: -1",
        ),
        (
            ["model.loss._target_=torch.nn.NoSuchLoss"],
            "model.loss=torch.nn.NoSuchLoss() is not allowed: ImportError",
        ),
    ],
)
def test_parts_that_do_not_build_stop_the_run_before_any_data_is_read(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    """Keys the settings cannot know (they belong to the node's _target_): train() builds the loss, optimizer and
    schedule on a dummy parameter first, and names the node, its options and the error in one line."""
    cache = tmp_path / "cache"
    cfg = compose_config("train", f"paths.cache_dir={cache}", *overrides, output_dir=tmp_path / "run")
    validate(cfg)
    with pytest.raises(SettingsError) as caught:
        train(cfg)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not cache.exists()  # no demo data made, no features


def test_a_part_that_does_not_build_stops_a_single_run_in_one_line(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = _train_cli(f"paths.cache_dir={cache}", "+model.loss.foo=1", cwd=tmp_path)
    assert result.returncode == 1
    assert "error: model.loss=torch.nn.BCEWithLogitsLoss(foo=1) is not allowed: TypeError" in result.stdout
    assert "Traceback" not in result.stdout and not cache.exists()


def test_bad_setting_stops_the_command_before_anything_is_read(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = _train_cli(f"paths.cache_dir={cache}", "threshold_calibration=bogus", cwd=tmp_path)
    assert result.returncode == 1
    assert "error: threshold_calibration='bogus' is not allowed" in result.stdout
    assert "Traceback" not in result.stdout
    assert not cache.exists() and not (tmp_path / "outputs").exists()  # no demo data, no run folder
    sweep = _train_cli("-m", f"paths.cache_dir={cache}", "lr=1e-3,abc", cwd=tmp_path)
    assert sweep.returncode == 1 and "job lr-abc: lr='abc' is not allowed" in sweep.stdout
    assert not cache.exists() and not (tmp_path / "multirun").exists()


def test_diverging_loss_stops_the_run_without_results(compose_train: Callable[..., DictConfig]) -> None:
    cfg = compose_train("lr=1e30", "model/image_encoder=small_cnn")
    with pytest.raises(FloatingPointError, match="training loss is (nan|inf).*lower lr"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_result_files_are_strict_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        write_json(tmp_path / "metrics.json", {"val_samples_f1": float("nan")})
    assert not list(tmp_path.iterdir())  # no partial file, no temporary left behind
    write_json(tmp_path / "metrics.json", {"val_samples_f1": 0.5})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"val_samples_f1": 0.5}


def test_a_damaged_last_checkpoint_is_named_before_an_automatic_resume(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = compose_train("trainer.max_epochs=1", "model/image_encoder=small_cnn")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    (run / "metrics.json").unlink()
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # killed while writing
    with pytest.raises(CheckpointError, match=r"last\.ckpt.*delete it.*ckpt_path="):
        train(cfg)
    best = run / "checkpoints" / "best.ckpt"
    best.write_bytes(b"")
    predict_cfg = compose_config(
        "predict", f"ckpt_path={best}", f"output={tmp_path / 'sub.csv'}", output_dir=tmp_path
    )
    with pytest.raises(CheckpointError, match=r"best\.ckpt is empty"):
        predict(predict_cfg)
    assert not (tmp_path / "sub.csv").exists()


def test_a_run_that_trained_no_step_reports_no_results(compose_train: Callable[..., DictConfig]) -> None:
    """A fit with no training batch (as each DDP process has when its share of the rows is below one batch,
    the last incomplete batch being dropped; here limit_train_batches=0) writes no metrics.json that a
    re-run would skip as done."""
    cfg = compose_train("+trainer.limit_train_batches=0", "model/image_encoder=small_cnn")
    with pytest.raises(RuntimeError, match=r"no training step ran: .*data\.batch_size=32"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_resuming_from_another_runs_checkpoint_never_reads_or_writes_its_files(
    tiny_demo: Path, tmp_path: Path
) -> None:
    """ckpt_path= another run's last.ckpt: this run's results and checkpoints stay in its own folder (Lightning
    restores the other folder's best path), the other run's best.ckpt is left as it was, and a checkpoint of
    another network is refused before any data is read."""
    quick = [*fast_overrides(tiny_demo, tmp_path / "cache"), "model/image_encoder=small_cnn"]
    first = tmp_path / "first"
    train(compose_config("train", *quick, "trainer.max_epochs=2", output_dir=first))
    their_best = (first / "checkpoints" / "best.ckpt").read_bytes()
    resume = [*quick, f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", "threshold_calibration=per_class"]

    second = tmp_path / "second"
    metrics = train(compose_config("train", *resume, "trainer.max_epochs=3", output_dir=second))
    assert metrics["checkpoint"] == str(second / "checkpoints" / "best.ckpt") and metrics["epochs"] == 3
    assert (first / "checkpoints" / "best.ckpt").read_bytes() == their_best

    with pytest.raises(RuntimeError, match="saved no checkpoint in .*third"):  # nothing left to train
        train(compose_config("train", *resume, "trainer.max_epochs=2", output_dir=tmp_path / "third"))
    assert (first / "checkpoints" / "best.ckpt").read_bytes() == their_best

    other = compose_config("train", *resume, "model.hidden_dim=8", output_dir=tmp_path / "fourth")
    with pytest.raises(CheckpointError, match=r"another network: model.hidden_dim \(there 16, here 8\)"):
        train(other)
    assert not (tmp_path / "fourth" / "config_resolved.yaml").exists()


PREDICT = str(REPO / "predict.py")


def _predict_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _cli(PREDICT, *args, cwd=cwd)


def test_predict_names_expected_errors_in_one_line(tmp_path: Path) -> None:
    """No finished run, a checkpoint of the previous layout: `error: ...` and exit code 1, not a traceback."""
    none = _predict_cli("ckpt_path=latest", cwd=tmp_path)
    assert none.returncode == 1, none.stdout[-3000:]
    assert "error: no finished run (checkpoints/best.ckpt beside metrics.json) under" in none.stdout
    assert "Traceback" not in none.stdout
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"label_ids": [1], "vocab_tokens": ["[PAD]"]}}, old)
    layout = _predict_cli(f"ckpt_path={old}", "accelerator=cpu", cwd=tmp_path)
    assert layout.returncode == 1, layout.stdout[-3000:]
    assert f"error: checkpoint {old} was written by another mlcap version" in layout.stdout
    assert "Traceback" not in layout.stdout


def test_predict_refuses_a_gpu_the_machine_does_not_have(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for accelerator in ("gpu", "cuda"):
        cfg = compose_config(
            "predict", f"accelerator={accelerator}", "ckpt_path=/no/such.ckpt", output_dir=tmp_path
        )
        with pytest.raises(
            SettingsError, match=f"accelerator={accelerator} is not allowed: torch finds no GPU"
        ):
            predict(cfg)  # before the checkpoint is even looked for
    assert [predict_device(a) for a in ("auto", "cpu")] == ["cpu", "cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [predict_device(a) for a in ("auto", "cpu", "gpu", "cuda")] == ["cuda", "cpu", "cuda", "cuda"]


def test_predict_test_time_flips_name_predicts_own_keys(tmp_path: Path) -> None:
    """A tta checkpoint predicted with cache=false would serve no cached views: refused naming cache= / tta=,
    predict.py's keys, not the training keys."""
    frozen = SimpleNamespace(net=SimpleNamespace(image_encoder=SimpleNamespace(freeze=True)))
    views = SimpleNamespace(cache_views=4)
    ckpt = tmp_path / "best.ckpt"
    cfg = compose_config("predict", "cache=false", output_dir=tmp_path)
    with pytest.raises(SettingsError) as caught:
        check_tta(cfg, frozen, views, True, ckpt)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith("tta=null (the checkpoint's tta=true) averages the cached flip views")
    assert "got cache=false" in message and "predict with tta=false or cache=true" in message
    assert "data.cache" not in message
    check_tta(compose_config("predict", output_dir=tmp_path), frozen, views, True, ckpt)  # cache=null: cached
    check_tta(cfg, frozen, views, False, ckpt)
    with pytest.raises(SettingsError, match="tta=true averages the flip views, but .* data.cache_views=1"):
        check_tta(
            compose_config("predict", "tta=true", output_dir=tmp_path),
            frozen,
            SimpleNamespace(cache_views=1),  # type: ignore[arg-type]
            True,
            ckpt,
        )


def test_a_sweep_job_folder_is_taken_back_unquoted(tiny_demo: Path, tmp_path: Path) -> None:
    """A path copied from a job folder of a real sweep works as typed (issue 19, finding 10): `predict.py
    ckpt_path=<job>/checkpoints/best.ckpt` predicts, and `train.py hydra.run.dir=<job>` with the job's
    settings finds it finished; neither is quoted, so the folder name must parse as a Hydra value."""
    sweep = tmp_path / "sweep"
    quick = _quick(tiny_demo, tmp_path)
    ran = _train_cli("-m", "lr=3e-4,3e-3", "seed=1", *quick, f"hydra.sweep.dir={sweep}")
    assert ran.returncode == 0, ran.stdout[-3000:]
    jobs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert jobs == ["lr-0.0003", "lr-0.003"]
    job = sweep / "lr-0.0003"
    predicted = _predict_cli(
        f"ckpt_path={job}/checkpoints/best.ckpt",
        f"output={tmp_path}/submission.csv",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "accelerator=cpu",
        "num_workers=0",
        cwd=tmp_path,
    )
    assert predicted.returncode == 0, predicted.stdout[-3000:]
    assert (tmp_path / "submission.csv").is_file()
    finished = _mtimes(job, "metrics.json")
    resumed = _train_cli("lr=3e-4", "seed=1", *quick, f"hydra.run.dir={job}")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"{job} holds this run, finished" in resumed.stdout and "skipping" in resumed.stdout
    assert _mtimes(job, "metrics.json") == finished
