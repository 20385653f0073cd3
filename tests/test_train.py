"""End-to-end training and prediction on tiny demo data, each input path, the study's setups, and bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CONF, REPO, TINY_DEMO, compose_config, fast_overrides
from omegaconf import DictConfig, OmegaConf

from mlcap.data.comp5329 import DataFormatError, read_captions_csv
from mlcap.data.datamodule import split_indices
from mlcap.models.image_encoders import build_backbone
from mlcap.predict import predict
from mlcap.settings import validate
from mlcap.train import build_datamodule, train


def _predict_scored(checkpoint: str, root: Path, tmp_path: Path, *extra: str) -> dict:
    """predict.py from a checkpoint alone, scored against root's test labels: one row per row of root's test.csv."""
    overrides = [
        f"ckpt_path={checkpoint}",
        f"output={tmp_path / 'submission.csv'}",
        f"labels_csv={root}/test_labels.csv",
        *extra,
    ]
    result = predict(compose_config("predict", *overrides, output_dir=tmp_path / "predict"))
    assert result["rows"] == len(read_captions_csv(root / "test.csv")) and "samples_f1" in result
    return result


@pytest.fixture(scope="module")
def trained_run(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One short real training run of the default model (frozen offline encoder, cached features)."""
    tmp = tmp_path_factory.mktemp("trained")
    overrides = [
        *fast_overrides(tiny_demo, tmp / "cache"),
        "trainer.max_epochs=25",
        "data.batch_size=16",
        "lr=3e-3",
        "threshold_calibration=per_class",
        "data.cache_views=4",  # the flip views, for test-time augmentation at predict time
    ]
    return tmp / "run", train(compose_config("train", *overrides, output_dir=tmp / "run"))


def _validation_rows(tiny_demo: Path) -> pd.DataFrame:
    """The demo's training rows that train.py holds out for validation (the default data.val_fraction/split_seed)."""
    data = compose_config("train").data
    table = read_captions_csv(tiny_demo / "train.csv")
    _, val_idx = split_indices(len(table), data.val_fraction, data.split_seed)
    return table.iloc[val_idx]


def _as_test_files(rows: pd.DataFrame, folder: Path) -> tuple[Path, Path]:
    """Labelled rows written as a test CSV (ImageID,Caption) and its labels file (ImageID,Labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    captions, labels = folder / "rows.csv", folder / "rows_labels.csv"
    captions.write_text(
        "ImageID,Caption\n" + "".join(f'{r.image_id},"{r.caption}"\n' for r in rows.itertuples())
    )
    labels.write_text(
        "ImageID,Labels\n"
        + "".join(f"{r.image_id},{' '.join(map(str, r.labels))}\n" for r in rows.itertuples())
    )
    return captions, labels


def _most_frequent_label_f1(label_lists: list[list[int]]) -> float:
    """Samples-F1 of predicting the single most frequent label for every image."""
    counts = pd.Series([label for labels in label_lists for label in labels]).value_counts()
    top = int(counts.index[0])
    return sum(2 * (top in labels) / (1 + len(labels)) for labels in label_lists) / len(label_lists)


def test_training_writes_every_result(trained_run: tuple[Path, dict]) -> None:
    run_dir, metrics = trained_run
    for name in [
        "metrics.json",
        "per_class.csv",
        "per_class.md",
        "config_resolved.yaml",
        "checkpoints/best.ckpt",
    ]:
        assert (run_dir / name).exists(), name
    assert list(run_dir.glob("events.out.tfevents.*"))  # TensorBoard names the run after its folder
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["val_samples_f1"] == pytest.approx(metrics["val_samples_f1"])
    for key in ["val_loss", "train_loss", "model_size_mb", "under_100mb", "train_time_s", "val_macro_f1"]:
        assert saved[key] is not None, key
    # Lite0 (about 3.4M fp32 weights) plus the heads: every weight needed at inference is counted.
    assert 13 < saved["model_size_mb"] < 20 and saved["under_100mb"]
    per_class = pd.read_csv(run_dir / "per_class.csv", index_col=0)
    assert {"1", "19", "micro avg", "macro avg", "weighted avg", "samples avg"} <= set(
        per_class.index.astype(str)
    )


def test_validation_f1_beats_most_frequent_label(trained_run: tuple[Path, dict], tiny_demo: Path) -> None:
    _, metrics = trained_run
    baseline = _most_frequent_label_f1(list(_validation_rows(tiny_demo)["labels"]))
    assert metrics["val_samples_f1"] > baseline + 0.05, (metrics["val_samples_f1"], baseline)


def test_predict_round_trip_from_checkpoint_alone(
    trained_run: tuple[Path, dict], tiny_demo: Path, tmp_path: Path
) -> None:
    """predict.py rebuilds the model from its checkpoint alone (vocabulary, preprocessing, calibrated thresholds):
    on the validation rows it scores what training reported, and it writes one row per test row, in order."""
    _, metrics = trained_run
    result = _predict_scored(metrics["checkpoint"], tiny_demo, tmp_path)
    submission = pd.read_csv(result["submission"], dtype=str, keep_default_na=False)
    expected_ids = list(read_captions_csv(tiny_demo / "test.csv")["image_id"])
    assert list(submission.columns) == ["ImageID", "Labels"]
    assert list(submission["ImageID"]) == expected_ids
    label_ids = set(compose_config("train").data.label_ids)
    for labels in submission["Labels"]:
        ids = [int(x) for x in labels.split()]
        assert ids and set(ids) <= label_ids, labels
    rows, labels_csv = _as_test_files(_validation_rows(tiny_demo), tmp_path / "val")
    overrides = [
        f"ckpt_path={metrics['checkpoint']}", "data=comp5329", f"data.root={tiny_demo}", f"data.predict_csv={rows}",
        f"labels_csv={labels_csv}",
    ]  # fmt: skip
    val = predict(
        compose_config("predict", *overrides, f"output={tmp_path / 'val.csv'}", output_dir=tmp_path)
    )
    # metrics.json's F1 is sklearn's (float64), predict's a float32 tensor: equal to 1e-6.
    assert val["samples_f1"] == pytest.approx(metrics["val_samples_f1"], abs=1e-6)


def test_predict_takes_the_data_group_like_train(
    trained_run: tuple[Path, dict], tiny_demo: Path, tmp_path: Path
) -> None:
    """`predict.py data=comp5329 data.root=...`: the selection train.py takes; the rows come from that root."""
    _, metrics = trained_run
    elsewhere = tmp_path / "copy"
    shutil.copytree(tiny_demo, elsewhere)
    test_csv = elsewhere / "test.csv"  # 10 rows here, 40 under the root the checkpoint was trained on
    test_csv.write_text("".join(test_csv.read_text().splitlines(keepends=True)[:11]))
    result = _predict_scored(
        metrics["checkpoint"], elsewhere, tmp_path, "data=comp5329", f"data.root={elsewhere}"
    )
    assert result["rows"] == 10


def test_predict_data_demo_generates_the_demo_like_train(
    trained_run: tuple[Path, dict], tmp_path: Path
) -> None:
    _, metrics = trained_run
    cache = tmp_path / "fresh-cache"
    demo = [f"data.demo.{k}={v}" for k, v in TINY_DEMO.items()]
    overrides = [f"ckpt_path={metrics['checkpoint']}", "data=demo", f"paths.cache_dir={cache}", *demo]
    result = predict(
        compose_config("predict", *overrides, f"output={tmp_path / 'sub.csv'}", output_dir=tmp_path / "p")
    )
    assert result["rows"] == TINY_DEMO["n_test"] and (cache / "demo-data" / "test.csv").is_file()


def test_calibrated_thresholds_are_stored_in_the_checkpoint(trained_run: tuple[Path, dict]) -> None:
    _, metrics = trained_run
    assert isinstance(metrics["threshold"], list) and len(metrics["threshold"]) == 19
    assert metrics["val_samples_f1"] >= metrics["val_samples_f1_uncalibrated"]
    assert 0.0 < metrics["val_samples_f1_calibrated_crossfit"] <= metrics["val_samples_f1"] + 1e-9
    checkpoint = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["threshold"] == metrics["threshold"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.text_encoder=rnn+sentence", "model.aux_heads=true", "tta=true", "data.cache_views=4"],
        [
            "model.text_encoder=sentence",
            "data.cache=false",
            "model/loss=weighted_bce",
            "threshold_calibration=global",
        ],
        ["model/image_encoder=small_cnn", "model/loss=asl"],
    ],
    ids=["sentence-embeddings-cached,aux-heads,flip-views", "sentence-uncached", "decoded-images"],
)
def test_each_input_path_trains_a_step(
    compose_train: Callable[..., DictConfig], overrides: list[str]
) -> None:
    """The data paths no other test trains on (cached and uncached sentence embeddings, decoded images) run a
    training step and an evaluation; what each switch builds is tested without training in
    test_model_switches.py."""
    metrics = train(compose_train("trainer.fast_dev_run=true", *overrides))
    assert metrics["epochs"] == 1 and metrics["threshold_calibration"] in ("none", "global")
    frozen_backbone = "model/image_encoder=small_cnn" not in overrides
    assert (metrics["trainable_parameters"] < metrics["parameters"]) == frozen_backbone


def test_batch_size_reaches_the_data(compose_train: Callable[..., DictConfig]) -> None:
    assert build_datamodule(compose_train("data.batch_size=16")).batch_size == 16


def test_experiment_paper_is_the_study_setup() -> None:
    """experiment=paper is the study's best model: of each of its tables (conf/paper/), it has the setting of the
    best row(s) and of no other row; on COMP5329 at the data.root given, with a valid config."""
    cfg = compose_config("train", "experiment=paper", f"data.root={REPO}")
    validate(cfg)
    assert cfg.data.root == str(REPO) and cfg.data.demo is None
    best_model = OmegaConf.load(CONF / "paper" / "best.yaml").setting  # its Table 5
    assert all(OmegaConf.select(cfg, key) == value for key, value in best_model.items())
    for path in sorted((CONF / "paper").glob("table*.yaml")):
        rows = OmegaConf.load(path).rows
        best = max(row.val_samples_f1 for row in rows)
        for row in rows:
            has_setting = all(OmegaConf.select(cfg, key) == value for key, value in row.setting.items())
            assert has_setting == (row.val_samples_f1 == best), (path.stem, row.name)
    # The study's image side is given in its text, not in its tables: a frozen ResNeXt-50 at 224 px.
    assert cfg.model.image_encoder.name == "resnext50" and cfg.model.image_encoder.freeze
    assert cfg.data.image_size == 224


def test_experiment_best_trains_and_predicts_on_data_in_the_comp5329_layout(
    tiny_demo: Path, tmp_path: Path
) -> None:
    """`experiment=best` end to end, as the README runs it, on the demo files (same layout as COMP5329)."""
    overrides = [
        "experiment=best",
        f"data.root={tiny_demo}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.image_size=32",
        "data.num_workers=0",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    metrics = train(compose_config("train", *overrides, output_dir=tmp_path / "run"))
    assert isinstance(metrics["threshold"], float)  # one calibrated (global) threshold
    # Lite2 (19 MB) + MiniLM (frozen part in half precision, 2 fine-tuned layers in fp32) + heads, all counted.
    assert 70 < metrics["model_size_mb"] < 80 and metrics["under_100mb"]
    _predict_scored(metrics["checkpoint"], tiny_demo, tmp_path)


def _broken_copy(tiny_demo: Path, tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(tiny_demo, root)
    (root / "demo.json").unlink()
    return root


def test_missing_image_fails_before_training(
    compose_train: Callable[..., DictConfig], tiny_demo: Path, tmp_path: Path
) -> None:
    root = _broken_copy(tiny_demo, tmp_path)
    (root / "data" / "7.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="7.jpg"):
        train(compose_train(f"data.root={root}", "data.demo=null"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_label_fails_before_training(
    compose_train: Callable[..., DictConfig], tiny_demo: Path, tmp_path: Path
) -> None:
    root = _broken_copy(tiny_demo, tmp_path)
    lines = (root / "train.csv").read_text().split("\n")
    image_id, _, caption = lines[3].split(",", 2)
    lines[3] = f"{image_id},1 42,{caption}"
    (root / "train.csv").write_text("\n".join(lines))
    with pytest.raises(DataFormatError, match=r"line 4.*42|42.*line 4"):
        train(compose_train(f"data.root={root}", "data.demo=null"))


def test_unreadable_row_names_file_and_line(
    compose_train: Callable[..., DictConfig], tiny_demo: Path, tmp_path: Path
) -> None:
    root = _broken_copy(tiny_demo, tmp_path)
    lines = (root / "train.csv").read_text().split("\n")
    lines[5] = lines[5].rstrip('"')  # caption never closed
    (root / "train.csv").write_text("\n".join(lines))
    with pytest.raises(DataFormatError, match="train.csv, line 6"):
        train(compose_train(f"data.root={root}", "data.demo=null"))


def test_two_point_multirun_in_subprocess(tiny_demo: Path, tmp_path: Path) -> None:
    overrides = [
        o for o in fast_overrides(tiny_demo, tmp_path / "cache") if not o.startswith("trainer.max_epochs")
    ]
    command = [
        sys.executable,
        "train.py",
        "-m",
        "lr=1e-3,3e-3",
        *overrides,
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 2
    assert {OmegaConf.load(r.parent / "config_resolved.yaml").lr for r in runs} == {0.001, 0.003}


def test_rerun_skips_finished_and_resumes_interrupted(compose_train: Callable[..., DictConfig]) -> None:
    cfg = compose_train("trainer.max_epochs=2")
    first = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    mtime = (run_dir / "metrics.json").stat().st_mtime_ns
    assert train(cfg)["val_samples_f1"] == first["val_samples_f1"]  # finished: skipped
    assert (run_dir / "metrics.json").stat().st_mtime_ns == mtime
    # Interrupted after its last checkpoint but before metrics.json: resumes and reports the whole history.
    (run_dir / "metrics.json").unlink()
    resumed = train(cfg)
    assert resumed["epochs"] == 2 and resumed["train_loss"] is not None
    assert resumed["val_samples_f1"] == pytest.approx(first["val_samples_f1"])


def test_predict_with_test_time_flips(
    trained_run: tuple[Path, dict], tiny_demo: Path, tmp_path: Path
) -> None:
    """tta=true averages the 4 flip views: its decisions are not those of the original view alone."""
    _, metrics = trained_run
    results = [
        _predict_scored(metrics["checkpoint"], tiny_demo, tmp_path / tta, f"tta={tta}")
        for tta in ("false", "true")
    ]
    submissions = [pd.read_csv(result["submission"]) for result in results]
    assert (submissions[0]["Labels"] != submissions[1]["Labels"]).any()  # 8 of the 40 rows when written


def test_predict_refuses_test_time_flips_a_checkpoint_has_no_views_for(
    compose_train: Callable[..., DictConfig], tiny_demo: Path, tmp_path: Path
) -> None:
    """A 1-view checkpoint with tta=true would silently predict from the original view alone."""
    metrics = train(compose_train("trainer.max_epochs=1", "data.cache_views=1"))
    with pytest.raises(ValueError, match="was trained with data.cache_views=1: predict with tta=false"):
        _predict_scored(metrics["checkpoint"], tiny_demo, tmp_path, "tta=true")


def test_checkpoint_backbone_has_the_training_fingerprint(trained_run: tuple[Path, dict]) -> None:
    """Predicting from a checkpoint reuses the features cached in training: the cache key sees equal tensors."""
    from mlcap.models.image_encoders import state_fingerprint
    from mlcap.models.lit_module import MultiLabelClassifier

    _, metrics = trained_run
    loaded = MultiLabelClassifier.load_from_checkpoint(metrics["checkpoint"], load_pretrained=False)
    fresh = build_backbone("efficientnet_lite0", pretrained=True)
    assert state_fingerprint(loaded.net.image_encoder.backbone) == state_fingerprint(fresh.module)


def test_partial_fine_tuning_on_cached_maps_trains_and_predicts(tiny_demo: Path, tmp_path: Path) -> None:
    """Top stage trained on a cached non-square spatial map, label attention, one-cycle schedule; then predict."""
    overrides = [
        *fast_overrides(tiny_demo, tmp_path / "cache"),
        "data.image_size=[32,48]",
        "data.cache_views=2",
        "model.image_encoder.trainable_blocks=1",
        "model.image_encoder.label_attention=true",
        "model.backbone_lr_scale=0.5",
        "model/scheduler=onecycle",
        "trainer.max_epochs=2",
    ]
    metrics = train(compose_config("train", *overrides, output_dir=tmp_path / "run"))
    # The top stage (Lite0's head conv and its norm) trained; every stage below is still the pretrained one.
    pretrained = build_backbone("efficientnet_lite0", pretrained=True).module.state_dict()
    state = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    prefix = "net.image_encoder.backbone."
    trained = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
    assert set(trained) == set(pretrained)
    changed = {key for key, value in pretrained.items() if not torch.equal(trained[key], value)}
    assert "conv_head.weight" in changed, changed
    assert {key.split(".")[0] for key in changed} <= {"conv_head", "bn2"}, changed
    maps = list((tmp_path / "cache" / "features").glob("*.npy"))
    assert len(maps) == 1
    # [images, views, channels, height, width]: the input of Lite0's conv_head at 32x48 is 320 x 1 x 2.
    assert np.load(maps[0]).shape[1:] == (2, 320, 1, 2)
    _predict_scored(metrics["checkpoint"], tiny_demo, tmp_path)
