"""EDA tables and files, on the tiny demo data and (when present) the real COMP5329 sample."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY_DEMO, compose_config
from omegaconf import open_dict

from mlcap.data.comp5329 import read_captions_csv
from mlcap.eda import caption_lengths, label_counts, labels_per_image, main, run_eda


def test_tables() -> None:
    labels = [[1], [1, 19], [3, 1, 19], [19]]
    per_image = labels_per_image(labels)
    assert per_image["images"].to_dict() == {1: 2, 2: 1, 3: 1}
    assert per_image["share"].sum() == pytest.approx(1.0)
    counts = label_counts(labels, [1, 3, 12, 19])
    assert counts["images"].to_dict() == {1: 3, 3: 1, 12: 0, 19: 3}
    assert counts["never_seen"].to_dict() == {1: False, 3: False, 12: True, 19: False}
    # Preprocessing drops stop words and punctuation and lemmatises, as the model's input does.
    assert list(caption_lengths(["A man riding a horse.", "", "Two dogs, playing!"])) == [3, 0, 3]


def test_eda_on_demo_data(tiny_demo: Path, tmp_path: Path) -> None:
    demo = [f"data.demo.{key}={value}" for key, value in TINY_DEMO.items()]
    overrides = [f"data.root={tiny_demo}", *demo, f"paths.cache_dir={tmp_path}"]
    cfg = compose_config("eda", *overrides, output_dir=tmp_path / "out")
    report = run_eda(cfg).read_text()
    assert f"{TINY_DEMO['n_train']} labelled images, {TINY_DEMO['n_test']} unlabelled test images" in report
    assert "## Labels per image" in report and "## Caption length after preprocessing" in report
    for name in (
        "labels_per_image.png",
        "label_counts.png",
        "caption_length.png",
        "label_counts.csv",
        "labels_per_image.csv",
        "caption_length_stats.csv",
    ):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    counts = pd.read_csv(tmp_path / "out" / "label_counts.csv", index_col="label")
    assert len(counts) == 19 and counts["images"].sum() >= TINY_DEMO["n_train"]


def test_missing_data_is_explained(tmp_path: Path) -> None:
    cfg = compose_config("eda", "data=comp5329", f"data.root={tmp_path / 'nowhere'}", output_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="set data.root to the folder holding train.csv"):
        run_eda(cfg)
    with open_dict(cfg):
        cfg.data.root = "???"
    with pytest.raises(ValueError, match="data.root is not set"):
        run_eda(cfg)


def test_command_line_entry_composes_its_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m mlcap.eda` finds conf/eda.yaml (run in-process with --cfg: prints the config, runs nothing)."""
    monkeypatch.setattr(sys, "argv", ["mlcap.eda", "--cfg", "job", "data=comp5329", "data.root=/x"])
    main()
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["task_name"] == "eda" and printed["data"]["root"] == "/x"


def test_eda_on_the_real_sample(real_sample: Path, tmp_path: Path) -> None:
    cfg = compose_config("eda", "data=comp5329", f"data.root={real_sample}", output_dir=tmp_path)
    report = run_eda(cfg).read_text()
    assert "Never seen in the training data: 12." in report
    counts = pd.read_csv(tmp_path / "label_counts.csv", index_col="label")
    assert counts.loc[12, "images"] == 0 and counts["never_seen"].sum() == 1
    per_image = pd.read_csv(tmp_path / "labels_per_image.csv", index_col=0)
    rows = len(read_captions_csv(real_sample / "train.csv"))
    assert per_image["images"].sum() == rows and f"{rows} labelled images" in report
