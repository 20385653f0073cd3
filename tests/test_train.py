"""End-to-end training and prediction on tiny demo data, the study's ablation switches, and bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CONF, REPO, TINY_DEMO, compose_config, fast_overrides
from omegaconf import DictConfig, OmegaConf

from mlcap.data.comp5329 import DataFormatError, read_captions_csv
from mlcap.data.datamodule import split_indices
from mlcap.models.image_encoders import ImageEncoder
from mlcap.predict import predict
from mlcap.settings import validate
from mlcap.train import build_datamodule, build_model, train


def _compose(config: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """conftest.compose_config as the ablation-switch tests below call it."""
    return compose_config(config, *overrides, output_dir=output_dir)


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
    overrides = [f"ckpt_path={metrics['checkpoint']}", f"data.csv={rows}", f"labels_csv={labels_csv}"]
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


@pytest.fixture(scope="module")
def tiny_datamodule(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple]:
    """Build (config, model) for overrides without training: one read of the tiny demo for all switches."""
    cache = tmp_path_factory.mktemp("switches") / "cache"
    base_cfg = _compose("train", fast_overrides(tiny_demo, cache), cache.parent / "run")
    datamodule = build_datamodule(base_cfg)

    def _build(*overrides: str) -> tuple[DictConfig, torch.nn.Module]:
        cfg = _compose("train", [*fast_overrides(tiny_demo, cache), *overrides], cache.parent / "run")
        torch.manual_seed(0)
        return cfg, build_model(cfg, datamodule)

    return _build


def _count(module: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def test_each_ablation_switch_changes_the_network(tiny_datamodule: Callable[..., tuple]) -> None:
    """Each study switch reaches the network it names: modules, parameter counts, the loss, the embedding."""
    _, base = tiny_datamodule()
    caption = base.net.caption_encoder
    assert caption.attention is not None and isinstance(caption.rnn, torch.nn.GRU)
    assert _count(base.net, torch.nn.BatchNorm1d) == 1
    _, no_attention = tiny_datamodule("model.attention=false")
    assert no_attention.net.caption_encoder.attention is None
    _, mean_lstm = tiny_datamodule("model.attention=false", "model.pooling=mean", "model.rnn=lstm")
    assert isinstance(mean_lstm.net.caption_encoder.rnn, torch.nn.LSTM)
    assert mean_lstm.net.caption_encoder.pooling == "mean"
    _, no_norm = tiny_datamodule("model.batch_norm=false")
    assert _count(no_norm.net, torch.nn.BatchNorm1d) == 0
    _, image_only = tiny_datamodule("model.caption=false")
    assert image_only.net.caption_encoder is None and not image_only.net.has_text
    assert image_only.net.classifier[1].in_features == base.net.classifier[1].in_features // 2
    _, aux = tiny_datamodule("model.aux_heads=true")
    assert set(aux.net.aux) == {"image", "caption"}
    _, asl = tiny_datamodule("model.loss=asl")
    assert type(asl.loss_fn).__name__ == "AsymmetricLossMultiLabel"
    _, weighted = tiny_datamodule("model.loss=weighted_bce")
    assert weighted.loss_fn.pos_weight is not None and float(weighted.loss_fn.pos_weight.max()) > 1.0
    _, cnn = tiny_datamodule("model/image_encoder=small_cnn")
    assert cnn.net.image_encoder.name == "small_cnn" and not cnn.net.image_encoder.freeze
    _, tta = tiny_datamodule("tta=true", "data.cache_views=4")
    assert tta.hparams["tta"] is True


def test_table4_sizes_reach_the_layers(tiny_datamodule: Callable[..., tuple]) -> None:
    _, model = tiny_datamodule("model.hidden_dim=24", "model.word_dim=12", "model.embed_dim=40")
    caption = model.net.caption_encoder
    assert caption.rnn.hidden_size == 24 and caption.embedding.embedding_dim == 12
    assert caption.dense[0].out_features == 40 and model.net.image_encoder.head[1].out_features == 40
    cfg, _ = tiny_datamodule("lr=0.03", "data.batch_size=16")
    assert hydra.utils.instantiate(cfg.data).batch_size == 16
    assert model.hparams["lr"] != 0.03 and tiny_datamodule("lr=0.03")[1].hparams["lr"] == 0.03


def test_word_vector_switches_change_the_initial_embedding(tiny_datamodule: Callable[..., tuple]) -> None:
    """fasttext_sg, word2vec_sg, word2vec_cbow and none give four different initial embeddings."""
    weights = {
        name: tiny_datamodule(f"model.word_vectors={name}")[1].net.caption_encoder.embedding.weight.detach()
        for name in ("fasttext_sg", "word2vec_sg", "word2vec_cbow", "none")
    }
    names = list(weights)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(weights[a], weights[b]), (a, b)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.attention=false", "model.pooling=mean", "model.rnn=lstm"],
        ["model.caption=false"],
        ["model.aux_heads=true", "tta=true", "data.cache_views=4"],
        ["model.loss=weighted_bce", "threshold_calibration=global"],
        ["model.sentence_encoder=minilm", "model.aux_heads=true"],
        ["model.sentence_encoder=minilm", "model.caption=false", "data.cache=false"],
        [
            "model.sentence_encoder=minilm",
            "model.sentence_trainable_layers=1",
            "model.sentence_lr_scale=0.1",
            "model.sentence_max_tokens=16",
            "model.scheduler=onecycle",
        ],
        ["model/image_encoder=small_cnn"],  # trainable backbone: images decoded every step, no cache
    ],
    ids=lambda o: ",".join(o),
)
def test_ablation_switches_train(compose_train: Callable[..., DictConfig], overrides: list[str]) -> None:
    """Each data path (cached features, decoded images, sentence embeddings, token states) trains a step
    and is evaluated; the trainable parameters are those the switch implies."""
    metrics = train(compose_train("trainer.fast_dev_run=true", *overrides))
    assert metrics["epochs"] == 1 and metrics["threshold_calibration"] in ("none", "global")
    frozen_backbone = "model/image_encoder=small_cnn" not in overrides
    assert (metrics["trainable_parameters"] < metrics["parameters"]) == frozen_backbone
    if "model.sentence_trainable_layers=1" in overrides:
        assert metrics["trainable_parameters"] > 1_000_000  # one MiniLM layer (1.8M) trains


def test_experiment_paper_is_the_study_setup() -> None:
    """experiment=paper is the study's best model: of each of its tables (conf/paper/), it has the setting of the
    best row(s) and of no other row; on COMP5329 at the data.root given, with a valid config."""
    cfg = compose_config("train", "experiment=paper", f"data.root={REPO}")
    validate(cfg)
    assert cfg.data.root == str(REPO) and cfg.data.demo is None
    for path in sorted((CONF / "paper").glob("*.yaml")):
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


def test_checkpoint_backbone_has_the_training_fingerprint(trained_run: tuple[Path, dict]) -> None:
    """Predicting from a checkpoint reuses the features cached in training: the cache key sees equal tensors."""
    from mlcap.models.image_encoders import state_fingerprint
    from mlcap.models.lit_module import MultiLabelClassifier

    _, metrics = trained_run
    loaded = MultiLabelClassifier.load_from_checkpoint(metrics["checkpoint"], load_pretrained=False)
    fresh = ImageEncoder("efficientnet_lite0", embed_dim=8, pretrained=True, freeze=True)
    assert state_fingerprint(loaded.net.image_encoder.backbone) == state_fingerprint(fresh.backbone)


def test_partial_fine_tuning_on_cached_maps_trains_and_predicts(tiny_demo: Path, tmp_path: Path) -> None:
    """Top stage trained on a cached non-square spatial map, label attention, one-cycle schedule; then predict."""
    overrides = [
        *fast_overrides(tiny_demo, tmp_path / "cache"),
        "data.image_size=[32,48]",
        "data.cache_views=2",
        "model.image_encoder.trainable_blocks=1",
        "model.image_encoder.pooling=label_attention",
        "model.backbone_lr_scale=0.5",
        "model.scheduler=onecycle",
        "trainer.max_epochs=2",
    ]
    metrics = train(compose_config("train", *overrides, output_dir=tmp_path / "run"))
    # The top stage (Lite0's head conv and its norm) trained; every stage below is still the pretrained one.
    pretrained = ImageEncoder("efficientnet_lite0", embed_dim=8, pretrained=True).backbone.state_dict()
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
