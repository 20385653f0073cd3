"""model=captioner: caption generation trained like the classifier, scored by BLEU/ROUGE-L/CIDEr-D beside
the nearest-neighbour and most-frequent caption baselines."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO, TINY_DEMO, compose_config, fast_overrides
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlcap.captioning.metrics import METRIC_NAMES, caption_scores
from mlcap.captioning.task import build_captioner, generate
from mlcap.models.captioner import Captioner
from mlcap.predict import predict
from mlcap.settings import SettingsError, validate
from mlcap.train import build_datamodule, train

# The tiny captioner: a frozen (so cached) random small CNN under a small GRU.
TINY = ("model=captioner", "model/image_encoder=small_cnn", "model.image_encoder.freeze=true")


def _scalars(run_dir: Path) -> set[str]:
    tags: set[str] = set()
    for event_file in run_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return tags


def test_tiny_captioner_writes_caption_metrics_and_baselines(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    metrics = train(compose_train(*TINY, "trainer.max_epochs=4", "lr=3e-3"))
    run = tmp_path / "run"
    stored = json.loads((run / "metrics.json").read_text())
    for name in METRIC_NAMES:
        assert 0.0 <= stored[f"val_{name}"] <= (10.0 if name == "CIDEr-D" else 1.0)
        for baseline in ("nearest_neighbour", "most_frequent"):
            assert name in stored["baselines"][baseline]
    assert stored["baselines"]["most_frequent"]["caption"]  # the caption itself, for the reader
    beats = stored["val_CIDEr-D"] > stored["baselines"]["nearest_neighbour"]["CIDEr-D"]
    assert stored["beats_nearest_neighbour"] is beats
    assert ("does NOT beat" in stored["caption_verdict"]) is not beats
    assert stored["beam_size"] == 3 and stored["val_loss"] is not None
    assert metrics["val_CIDEr-D"] == stored["val_CIDEr-D"]
    # No classifier step ran: no per-class table; the checkpoint was picked by the captioner's monitor.
    assert not (run / "per_class.csv").exists()
    assert "val/CIDEr-D" in stored["history"][0]
    table = (run / "captions.md").read_text()
    assert table.count("](captions/") == 8 and len(list((run / "captions").glob("*.png"))) == 8
    tags = _scalars(run)
    assert {"val/CIDEr-D", "val/BLEU-4", "captions/nearest_neighbour/CIDEr-D", "hp/best_val_CIDEr-D"} <= tags

    # The round trip through the checkpoint regenerates the same captions (the same scores).
    best = Captioner.load_from_checkpoint(stored["checkpoint"], load_pretrained=False, map_location="cpu")
    datamodule = build_datamodule(compose_train(*TINY))
    build_captioner(compose_train(*TINY), datamodule)  # the features, through the cache
    references = [list(map(list, row)) for row in datamodule.tables["val"]["tokens"]]
    again = caption_scores(generate(best, datamodule, "val"), references)
    assert again["CIDEr-D"] == pytest.approx(stored["val_CIDEr-D"])


def test_caption_metrics_on_hand_made_examples() -> None:
    """pycocoevalcap's values on captions whose scores are known by hand."""
    refs = [[["dog", "run", "grass"]], [["man", "ride", "wave", "surfboard"]], [["cat", "sit", "sofa"]]]
    same = caption_scores([r[0] for r in refs], refs)
    assert same["BLEU-4"] == pytest.approx(1.0) and same["ROUGE-L"] == pytest.approx(1.0)
    # CIDEr-D: each n-gram in one image of three (idf log 3), identical tf-idf vectors: similarity 1 for
    # every n the caption has (3-word captions have no 4-gram), averaged over n=1..4, x10: (7.5 + 10 + 7.5) / 3.
    assert same["CIDEr-D"] == pytest.approx((7.5 + 10.0 + 7.5) / 3)
    shuffled = caption_scores([refs[1][0], refs[2][0], refs[0][0]], refs)
    assert shuffled["CIDEr-D"] < same["CIDEr-D"] and shuffled["CIDEr-D"] == 0.0
    # Two of three reference words, in order: unigram precision 9/9 over the corpus, brevity penalty
    # exp(1 - reference words / candidate words) = exp(1 - 10/9).
    short = caption_scores([["dog", "run"], refs[1][0], refs[2][0]], refs)
    assert short["BLEU-1"] == pytest.approx(math.exp(1 - 10 / 9))
    assert caption_scores([[], [], []], refs)["CIDEr-D"] == 0.0  # an empty caption scores, not fails


@pytest.mark.parametrize("decoder", ["gru", "transformer"])
def test_beam_search_of_width_one_is_greedy(compose_train: Callable[..., DictConfig], decoder: str) -> None:
    cfg = compose_train(*TINY, f"model.decoder={decoder}", "model.word_dim=16")
    datamodule = build_datamodule(cfg)
    model = build_captioner(cfg, datamodule).eval()
    torch.manual_seed(0)
    image = torch.randn(12, cfg.model.embed_dim)
    greedy = model.greedy(image)
    assert torch.equal(model.beam_search(image, 1), greedy)
    wider = model.beam_search(image, 4)
    assert wider.shape[0] == 12  # one caption per image


def test_tiny_captioner_overfits_twenty_images(compose_train: Callable[..., DictConfig]) -> None:
    """The demo's captions are templated: trained on 20 images alone, greedy decoding gives them back."""
    cfg = compose_train(*TINY, "model.dropout=0.0", "model.hidden_dim=64", "data.train_rows=20")
    datamodule = build_datamodule(cfg)
    model = build_captioner(cfg, datamodule)
    batch = next(iter(datamodule._loader("train", train=False)))  # noqa: SLF001 - the 20 rows in order
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(300):
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    model.eval()
    expected = [row[0][: cfg.data.max_len] for row in datamodule.tables["train"]["tokens"]]
    assert model.captions(batch, beam_size=1) == expected
    assert model.captions(batch, beam_size=3) == expected


def test_captioner_settings_are_checked(tiny_demo: Path, tmp_path: Path) -> None:
    def settings(*overrides: str) -> dict:
        return validate(compose_config("train", *fast_overrides(tiny_demo, tmp_path), *overrides))

    values = settings("model=captioner")
    assert values["monitor"] == "val/CIDEr-D" and values["model.beam_size"] == 3
    with pytest.raises(
        SettingsError, match=r"monitor='val/samples_f1' is not allowed: it must be one of val/BLEU-1"
    ):
        settings("model=captioner", "monitor=val/samples_f1")
    with pytest.raises(SettingsError, match=r"model.beam_size=0 is not allowed"):
        settings("model=captioner", "model.beam_size=0")
    with pytest.raises(SettingsError, match=r"model.decoder='lstm' is not allowed"):
        settings("model=captioner", "model.decoder=lstm")
    with pytest.raises(SettingsError, match=r"monitor='val/CIDEr-D' is not allowed"):
        settings("monitor=val/CIDEr-D")  # the classifier has no caption metrics


def _demo_data(tiny_demo: Path, cache: Path) -> list[str]:
    return [
        f"data.root={tiny_demo}",
        *(f"data.demo.{key}={value}" for key, value in TINY_DEMO.items()),
        "data.num_workers=0",
        f"paths.cache_dir={cache}",
        "trainer.enable_progress_bar=false",
    ]


@pytest.mark.slow
def test_train_py_model_captioner_with_shipped_defaults(tiny_demo: Path, tmp_path: Path) -> None:
    """`python train.py model=captioner`: the shipped captioner (EfficientNet-Lite0 features, GRU, beam 3)."""
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "model=captioner",
            *_demo_data(tiny_demo, tmp_path / "cache"),
            "trainer.max_epochs=2",
            f"hydra.run.dir={run}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val_CIDEr-D", "val_BLEU-4", "baselines"} <= set(metrics) and metrics["epochs"] == 2
    assert "nearest-neighbour baseline on CIDEr-D" in (run / "train.log").read_text()


@pytest.mark.slow
def test_sweep_over_a_captioner_key(tiny_demo: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            *TINY,
            *_demo_data(tiny_demo, tmp_path / "cache"),
            "data.image_size=32",
            "model.word_dim=16",
            "model.hidden_dim=16",
            "model.embed_dim=32",
            "trainer.max_epochs=1",
            "model.beam_size=1,2",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    jobs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert jobs == ["model.beam_size-1", "model.beam_size-2"]
    report = (sweep / "report.md").read_text()
    assert "## Captions" in report and "| `model.beam_size-2` |" in report


def test_predict_fill_generates_captions_only_where_they_are_empty(tiny_demo: Path, tmp_path: Path) -> None:
    """predict.py captions=fill with a captioner checkpoint: rows with a caption keep it, empty ones get one;
    captions=generated replaces every row's; the classifier predicts every row either way."""
    quick = fast_overrides(tiny_demo, tmp_path / "cache")
    classifier = train(compose_config("train", *quick, "trainer.max_epochs=1", output_dir=tmp_path / "cls"))
    # The captioner learnt elsewhere (another demo set, 30 test rows): predict.py captions the classifier's rows.
    elsewhere = [f"data.root={tmp_path / 'other-demo'}", "data.demo.n_test=30"]
    captioner = train(
        compose_config(
            "train", *quick, *TINY, *elsewhere, "trainer.max_epochs=2", output_dir=tmp_path / "cap"
        )
    )
    lines = (tiny_demo / "test.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    emptied = {i for i in range(0, len(rows), 3)}
    edited = [row.split(",", 1)[0] + ',""' if i in emptied else row for i, row in enumerate(rows)]
    (tmp_path / "some_empty.csv").write_text("\n".join([header, *edited]) + "\n")

    def predicted(mode: str) -> pd.DataFrame:
        result = predict(
            compose_config(
                "predict",
                f"ckpt_path={classifier['checkpoint']}",
                f"captioner_ckpt={captioner['checkpoint']}",
                f"captions={mode}",
                "data=comp5329",
                f"data.root={tiny_demo}",
                "data.predict_csv=" + str(tmp_path / "some_empty.csv"),
                f"paths.cache_dir={tmp_path / 'cache'}",
                f"output={tmp_path / mode / 'submission.csv'}",
                output_dir=tmp_path / mode,
            )
        )
        assert result["rows"] == len(rows)
        return pd.read_csv(result["captions"], keep_default_na=False)

    filled = predicted("fill")
    assert [i for i, source in enumerate(filled["source"]) if source == "generated"] == sorted(emptied)
    given = pd.read_csv(tiny_demo / "test.csv", keep_default_na=False)
    kept = [i for i in range(len(rows)) if i not in emptied]
    assert list(filled["Caption"].iloc[kept]) == list(given["Caption"].iloc[kept])
    generated = predicted("generated")
    assert set(generated["source"]) == {"generated"}
    assert list(generated["Caption"].iloc[sorted(emptied)]) == list(filled["Caption"].iloc[sorted(emptied)])
    own_rows = predict(
        compose_config(
            "predict",
            f"ckpt_path={classifier['checkpoint']}",
            f"captioner_ckpt={captioner['checkpoint']}",
            "captions=generated",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"output={tmp_path / 'own' / 'submission.csv'}",
            output_dir=tmp_path / "own",
        )
    )
    assert own_rows["rows"] == len(rows)  # the classifier's data (40 rows), not the captioner's (30)
    with pytest.raises(SettingsError, match="captions=fill needs captioner_ckpt"):
        predict(compose_config("predict", f"ckpt_path={classifier['checkpoint']}", "captions=fill"))
    with pytest.raises(
        SettingsError, match="is a captioner .* pass the classifier's checkpoint as ckpt_path"
    ):
        predict(compose_config("predict", f"ckpt_path={captioner['checkpoint']}"))


def test_caption_dropout_trains_on_empty_captions(compose_train: Callable[..., DictConfig]) -> None:
    """model.caption_dropout: a share of the training rows read the empty caption (one unknown word, as an
    empty caption is served at prediction), the others their own; validation rows are never dropped."""
    from mlcap.classifier_task import build_model
    from mlcap.data.text import UNK_ID
    from mlcap.models.lit_module import MultiLabelClassifier

    cfg = compose_train("model/image_encoder=small_cnn", "model.caption_dropout=0.5")
    datamodule = build_datamodule(cfg)
    model: MultiLabelClassifier = build_model(cfg, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    torch.manual_seed(0)
    dropped = model.drop_captions(batch)
    empty = (dropped.lengths == 1) & (dropped.tokens[:, 0] == UNK_ID) & (dropped.tokens[:, 1:] == 0).all(1)
    assert 0 < int(empty.sum()) < len(batch)
    kept = ~empty
    assert torch.equal(dropped.tokens[kept], batch.tokens[kept])
    assert torch.equal(dropped.lengths[kept], batch.lengths[kept])
    model.eval()
    assert model.drop_captions(batch) is batch  # only in training
    # A checkpoint written before the key existed loads with no dropout.
    from mlcap.settings import model_settings

    old = {k: v for k, v in dict(model.hparams["model"]).items() if k != "caption_dropout"}
    assert model_settings(old).caption_dropout == 0.0
    with pytest.raises(SettingsError, match="model.caption_dropout=0.5 .* model.text_encoder=sentence"):
        validate(compose_train("model.caption_dropout=0.5", "model.text_encoder=sentence"))
