"""The same rows in four formats (COMP5329 CSV, any CSV, JSON Lines, COCO's files) train and predict alike;
each format's malformed input is named before any work; several captions an image."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import compose_config

from mlcap.data.comp5329 import DataFormatError, read_captions_csv
from mlcap.data.datamodule import build_datamodule, split_indices
from mlcap.data.datasets import CaptionChoice
from mlcap.data.demo import DEMO_LABEL_NAMES
from mlcap.predict import predict
from mlcap.train import train

NAMES = [DEMO_LABEL_NAMES[i] for i in range(1, 20)]  # "person" ... "horse": names with spaces among them
# The run every format makes (seed 0): long enough to learn, small enough for seconds.
RUN = [
    "data.image_size=32", "data.batch_size=32", "data.num_workers=0", "model.word_dim=16", "model.hidden_dim=16",
    "model.embed_dim=32", "trainer.max_epochs=8", "lr=3e-3", "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]  # fmt: skip
# What data=comp5329 gave on the tiny demo with RUN before readers existed (commit 8eb525f, same command):
# val samples-F1 and the sha256 of predict.py's submission.csv. COMP5329 must stay exactly as it was.
PINNED_F1 = 0.44305555555555554
PINNED_SUBMISSION = "1883c038f80e574b1defe4b541c29036f61815750d921f317255df2cd0ef62e6"


def _name(label: int) -> str:
    return NAMES[label - 1]


def write_formats(demo: Path, folder: Path) -> dict[str, list[str]]:
    """The demo's rows as data=csv (other column names, label names), data=jsonl and data=coco files, all
    pointing at the demo's images; returns each format's data overrides (COMP5329: the demo itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    train, test = read_captions_csv(demo / "train.csv"), read_captions_csv(demo / "test.csv")
    images = str(demo / "data")
    for name, table in (("train", train), ("test", test)):
        rows = pd.DataFrame({"file": table["image_id"], "text": table["caption"]})
        if "labels" in table:
            rows["tags"] = [";".join(_name(i) for i in labels) for labels in table["labels"]]
        rows.to_csv(folder / f"{name}.csv", index=False)
        with (folder / f"{name}.jsonl").open("w") as out:
            for i, row in enumerate(table.itertuples()):
                item = {"img": row.image_id, "caption": row.caption}
                if "labels" in table:
                    item["labels"] = [_name(label) for label in row.labels]
                out.write(json.dumps(item) + ("\n\n" if i == 3 else "\n"))  # a blank line is allowed
        ids = [10_000 + i for i in range(len(table))]
        captions = {
            "images": [{"id": i, "file_name": f} for i, f in zip(ids, table["image_id"], strict=True)],
            "annotations": [
                {"id": n, "image_id": i, "caption": c}
                for n, (i, c) in enumerate(zip(ids, table["caption"], strict=True))
            ],
        }
        (folder / f"captions_{name}.json").write_text(json.dumps(captions))
        if "labels" in table:
            instances = {
                "images": captions["images"],
                "categories": [{"id": i, "name": _name(i), "supercategory": "x"} for i in range(1, 20)],
                "annotations": [
                    {"id": n, "image_id": i, "category_id": label}
                    for n, (i, labels) in enumerate(zip(ids, table["labels"], strict=True))
                    for label in labels
                ],
            }
            (folder / f"instances_{name}.json").write_text(json.dumps(instances))
    names = "[" + ",".join(f"'{n}'" for n in NAMES) + "]"
    return {
        "comp5329": ["data=comp5329", f"data.root={demo}"],
        "csv": [
            "data=csv", f"data.root={folder}", f"data.image_dir={images}", "data.columns.image=file",
            "data.columns.caption=text", "data.columns.labels=tags", "data.label_sep=';'", f"data.labels={names}",
        ],
        "jsonl": [
            "data=jsonl", f"data.root={folder}", f"data.image_dir={images}", "data.columns.image=img",
            f"data.labels={names}", "data.label_sep='|'",
        ],
        "coco": [
            "data=coco", f"data.root={folder}", f"data.image_dir={images}", "data.train_captions=captions_train.json",
            "data.train_instances=instances_train.json", "data.predict_captions=captions_test.json",
        ],
    }  # fmt: skip


def _data(overrides: Sequence[str], cache: Path) -> object:
    return compose_config("train", *overrides, *RUN, f"paths.cache_dir={cache}").data


def test_the_same_rows_in_four_formats_train_and_predict_alike(tiny_demo: Path, tmp_path: Path) -> None:
    formats = write_formats(tiny_demo, tmp_path / "formats")
    results = {}
    for kind, data in formats.items():
        # A cache of its own: a cold cache runs the extraction's loader, which draws from torch's global RNG
        # (see the report) and so shifts the shuffles of training after it; every format starts alike.
        run, cache = tmp_path / kind, tmp_path / f"cache-{kind}"
        dm = build_datamodule(_data(data, cache))
        dm.setup("fit")
        cfg = compose_config("train", *data, *RUN, f"paths.cache_dir={cache}", output_dir=run)
        metrics = train(cfg)
        checkpoint = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=True)
        output = tmp_path / f"{kind}.csv"
        overrides = [f"ckpt_path={metrics['checkpoint']}", f"output={output}", "num_workers=0"]
        predict(compose_config("predict", *overrides, output_dir=tmp_path / f"p-{kind}"))
        results[kind] = (dm, metrics, checkpoint["hyper_parameters"]["data"]["label_names"], output)
        # A file to predict that has labels is scored by itself (samples-F1 and the field's metrics).
        if kind == "csv":
            scored = predict(
                compose_config(
                    "predict", overrides[0], f"output={tmp_path / 'scored.csv'}", "data=csv", *data[1:],
                    "data.predict_file=train.csv",
                    f"paths.cache_dir={cache}", output_dir=tmp_path / "p-scored",
                )
            )  # fmt: skip
            assert scored["rows"] == 240 and {"samples_f1", "mAP", "CF1", "OF1"} <= set(scored)

    comp_dm, comp, _, comp_out = results["comp5329"]
    assert comp["val_samples_f1"] == pytest.approx(PINNED_F1, abs=1e-6)
    assert hashlib.sha256(comp_out.read_bytes()).hexdigest() == PINNED_SUBMISSION  # byte for byte as before
    expected = pd.read_csv(comp_out, dtype=str, keep_default_na=False)
    for kind, (dm, metrics, names, output) in results.items():
        assert list(dm.tables["val"]["image_id"]) == list(comp_dm.tables["val"]["image_id"]), kind
        assert metrics["val_samples_f1"] == pytest.approx(comp["val_samples_f1"], abs=1e-6), kind
        assert metrics["val_mAP"] == pytest.approx(comp["val_mAP"], abs=1e-6), kind
        submission = pd.read_csv(output, dtype=str, keep_default_na=False)
        assert list(submission["ImageID"]) == list(expected["ImageID"]), kind
        if kind == "comp5329":
            assert names == [str(i) for i in range(1, 20)]
            continue
        assert names == NAMES  # the checkpoint stores the names; submissions and per_class.csv use them
        sep = ";" if kind == "csv" else "|"  # the data's label_sep: COCO's names hold spaces
        as_ids = [
            " ".join(str(NAMES.index(n) + 1) for n in labels.split(sep)) for labels in submission["Labels"]
        ]
        assert as_ids == list(expected["Labels"]), kind
        per_class = pd.read_csv(tmp_path / kind / "per_class.csv", index_col=0)
        assert "traffic light" in per_class.index and "1" not in per_class.index


def test_label_names_holding_the_submission_separator_are_refused_before_work(
    tiny_demo: Path, tmp_path: Path
) -> None:
    """submission.csv joins labels with data.label_sep: a name holding it could not be read back."""
    data = write_formats(tiny_demo, tmp_path / "formats")["jsonl"]
    cfg = compose_config("train", *data, *RUN, "data.label_sep=' '", f"paths.cache_dir={tmp_path / 'c'}",
                         output_dir=tmp_path / "run")  # fmt: skip
    with pytest.raises(DataFormatError, match=r"label name\(s\) \['traffic light'.*data.label_sep=' '"):
        train(cfg)
    assert not (tmp_path / "c" / "features").exists()


def test_labels_default_to_the_sorted_set_seen_and_unknown_ones_are_named(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text('image,caption,labels\na.jpg,"a dog, a cat",dog cat\nb.jpg,x,bird\n')
    reader = build_datamodule(_data(["data=csv", f"data.root={tmp_path}"], tmp_path)).reader
    rows = reader.read("train")
    assert reader.label_names(rows) == ["bird", "cat", "dog"]
    assert rows["captions"][0] == ["a dog, a cat"] and rows["labels"][0] == ["dog", "cat"]
    dm = build_datamodule(_data(["data=csv", f"data.root={tmp_path}", "data.labels=[cat,dog]"], tmp_path))
    with pytest.raises(DataFormatError, match=r"train.csv, line 3: \['bird'\].*data.labels"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kind", "damage", "message"),
    [
        ("jsonl", lambda f: (f / "train.jsonl").write_text((f / "train.jsonl").read_text().replace('"img"', "{", 1)),
         r"train.jsonl, line 1: not valid JSON"),
        ("jsonl", lambda f: _append(f / "train.jsonl", '{"img": "1.jpg", "caption": "x", "labels": []}\n'),
         r"train.jsonl, line 242: duplicate image '1.jpg' \(first at line \d+\)"),
        ("csv", lambda f: (f / "train.csv").write_text((f / "train.csv").read_text().replace("text", "words", 1)),
         r"train.csv, line 1: no column 'text' \(data.columns.caption\)"),
        ("csv", lambda f: _append(f / "train.csv", "2.jpg,again,person\n"),
         r"train.csv, line \d+: duplicate image '2.jpg' \(first at line \d+\)"),
        ("csv", lambda f: _append(f / "train.csv", '9.jpg,"unclosed,person\n'), r"train.csv, line \d+"),
        ("coco", lambda f: _edit_json(f / "instances_train.json", "annotations", {"id": 77, "image_id": 10_000, "category_id": 99}),
         r"instances_train.json: annotation id 77 has category id 99, which is not in 'categories'"),
        ("coco", lambda f: _edit_json(f / "captions_train.json", "images", {"id": 10_001, "file_name": "x.jpg"}),
         r"captions_train.json, image id 10001: duplicate image id 10001"),
    ],
)  # fmt: skip
def test_malformed_input_is_named_before_any_work(
    kind: str, damage: object, message: str, tiny_demo: Path, tmp_path: Path
) -> None:
    data = write_formats(tiny_demo, tmp_path / "formats")[kind]
    damage(tmp_path / "formats")  # type: ignore[operator]
    cfg = compose_config(
        "train", *data, *RUN, f"paths.cache_dir={tmp_path / 'cache'}", output_dir=tmp_path / "run"
    )
    with pytest.raises(DataFormatError, match=message) as caught:
        train(cfg)
    assert "\n" not in str(caught.value)
    assert (
        not (tmp_path / "cache" / "features").exists()
        and not (tmp_path / "run" / "config_resolved.yaml").exists()
    )


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def _edit_json(path: Path, key: str, item: dict) -> None:
    data = json.loads(path.read_text())
    data[key].append(item)
    path.write_text(json.dumps(data))


def test_monitor_takes_the_fields_metrics_and_refuses_others() -> None:
    from mlcap.settings import SettingsError, validate

    assert compose_config("train").callbacks.early_stopping.monitor == "val/samples_f1"
    with pytest.raises(
        SettingsError, match=r"monitor='val/loss' is not allowed: it must be one of val/samples_f1, val/mAP"
    ):
        validate(compose_config("train", "monitor=val/loss"))


def test_caption_choice_draws_one_caption_a_row_or_all_of_them() -> None:
    choice = CaptionChoice(torch.tensor([0, 2, 3]), torch.tensor([2, 1, 4]), "all")
    texts, groups = choice.items(torch.tensor([2, 0]))
    assert texts.tolist() == [3, 4, 5, 6, 0, 1] and groups.tolist() == [0, 0, 0, 0, 1, 1]
    first, none = CaptionChoice(choice.start, choice.count, "first").items(torch.tensor([2, 0]))
    assert first.tolist() == [3, 0] and none is None
    draw = CaptionChoice(choice.start, choice.count, "draw")
    drawn = torch.stack([draw.items(torch.tensor([0, 1, 2]))[0] for _ in range(200)])
    assert set(drawn[:, 0].tolist()) == {0, 1} and set(drawn[:, 1].tolist()) == {2}
    assert set(drawn[:, 2].tolist()) == {3, 4, 5, 6}


def test_several_captions_an_image_train_and_average_at_prediction(tiny_demo: Path, tmp_path: Path) -> None:
    """COCO-style: each image with 2-3 captions (JSON Lines lists). Every caption reaches the vocabulary and the
    caption caches; prediction over all captions is the mean of predicting each caption alone."""
    train_rows = read_captions_csv(tiny_demo / "train.csv")
    folder = tmp_path / "multi"
    folder.mkdir()
    extra = ["a zebra nearby", "an old photograph", "seen from far away"]
    with (folder / "train.jsonl").open("w") as out:
        for i, row in enumerate(train_rows.itertuples()):
            caps = [row.caption, extra[i % 3]] + ([extra[(i + 1) % 3]] if i % 2 else [])
            out.write(
                json.dumps({"image": row.image_id, "caption": caps, "labels": [str(x) for x in row.labels]})
                + "\n"
            )
    val = train_rows.iloc[split_indices(len(train_rows), 0.2, 0)[1]].head(6)
    for name, caps in (("two", lambda r: [r.caption, "a zebra nearby"]), ("a", lambda r: r.caption),
                       ("b", lambda r: ["a zebra nearby"])):  # fmt: skip
        (folder / f"{name}.jsonl").write_text(
            "".join(json.dumps({"image": r.image_id, "caption": caps(r)}) + "\n" for r in val.itertuples())
        )
    data = ["data=jsonl", f"data.root={folder}", f"data.image_dir={tiny_demo / 'data'}"]
    dm = build_datamodule(_data(data, tmp_path / "c"))
    dm.setup("fit")
    n_captions = sum(len(c) for c in dm.tables["train"]["captions"])
    assert len(dm.captions("train")) == len(dm.train_token_lists) == n_captions > len(dm.tables["train"])
    assert "zebra" in dm.vocab and "photograph" in dm.vocab
    cfg = compose_config("train", *data, *RUN, "trainer.max_epochs=2", f"paths.cache_dir={tmp_path / 'c'}",
                         "monitor=val/mAP", output_dir=tmp_path / "run")  # fmt: skip
    assert cfg.callbacks.early_stopping.monitor == cfg.callbacks.model_checkpoint.monitor == "val/mAP"
    metrics = train(cfg)
    # The field's metrics each epoch (TensorBoard, metrics.json's history) and for the best epoch, by mAP.
    assert {"val/mAP", "val/CP", "val/CR", "val/CF1", "val/OP", "val/OR", "val/OF1"} <= set(
        metrics["history"][0]
    )
    best = max(metrics["history"], key=lambda e: e["val/mAP"])
    assert metrics["best_epoch"] == best["epoch"] and metrics["val_mAP"] == pytest.approx(
        best["val/mAP"], abs=1e-5
    )
    probs = {}
    for name in ("two", "a", "b"):
        overrides = [f"ckpt_path={metrics['checkpoint']}", "data=jsonl", f"data.root={folder}",
                     f"data.image_dir={tiny_demo / 'data'}", f"data.predict_file={name}.jsonl", "num_workers=0",
                     f"output={tmp_path / name}.csv", f"paths.cache_dir={tmp_path / 'c'}"]  # fmt: skip
        cfg = compose_config("predict", *overrides, output_dir=tmp_path / f"p{name}")
        probs[name] = _probabilities(cfg)
    torch.testing.assert_close(probs["two"], (probs["a"] + probs["b"]) / 2)


def _probabilities(cfg: object) -> torch.Tensor:
    """predict.py's probabilities for its rows (its data module, the checkpoint's model)."""
    from mlcap.extraction import prepare_inputs
    from mlcap.inference import probabilities
    from mlcap.models.lit_module import MultiLabelClassifier
    from mlcap.predict import data_metadata, prediction_data

    model = MultiLabelClassifier.load_from_checkpoint(cfg.ckpt_path, load_pretrained=False)  # type: ignore[attr-defined]
    dm = prediction_data(cfg, data_metadata(model), tta=False)  # type: ignore[arg-type]
    dm.setup("predict")
    dm.use_inputs(prepare_inputs(dm, model.net.image_encoder, model.net.sentence_encoder))
    return probabilities(model, dm.predict_dataloader(), accelerator="cpu")


def test_the_real_sample_reads_the_same_through_every_reader(real_sample: Path, tmp_path: Path) -> None:
    """data=comp5329 gives exactly the rows and split the strict reader gives; the same rows written as a
    standard CSV and read by data=csv are the same rows."""
    dm = build_datamodule(_data(["data=comp5329", f"data.root={real_sample}"], tmp_path))
    rows = dm.reader.read("train")
    strict = read_captions_csv(real_sample / "train.csv")
    assert list(rows["image_id"]) == list(strict["image_id"]) and len(rows) == 8000
    assert list(rows["captions"]) == [[c] for c in strict["caption"]]
    assert list(rows["labels"]) == [[str(x) for x in labels] for labels in strict["labels"]]
    pd.DataFrame(
        {
            "image": strict["image_id"],
            "caption": strict["caption"],
            "labels": [" ".join(map(str, x)) for x in strict["labels"]],
        }
    ).to_csv(tmp_path / "train.csv", index=False)
    csv_data = ["data=csv", f"data.root={tmp_path}", f"data.image_dir={real_sample / 'data'}",
                f"data.labels=[{','.join(map(str, range(1, 20)))}]"]  # fmt: skip
    reader = build_datamodule(_data(csv_data, tmp_path)).reader
    again = reader.read("train")
    assert list(again["captions"]) == list(rows["captions"]) and list(again["labels"]) == list(rows["labels"])
    assert reader.label_names(again) == dm.reader.label_names(rows)


def test_coco_images_without_instances_are_kept_unlabelled_and_counted(
    tiny_demo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = write_formats(tiny_demo, tmp_path / "formats")["coco"]
    path = tmp_path / "formats" / "instances_train.json"
    instances = json.loads(path.read_text())
    instances["annotations"] = [a for a in instances["annotations"] if a["image_id"] not in (10_000, 10_005)]
    path.write_text(json.dumps(instances))
    reader = build_datamodule(_data(data, tmp_path)).reader
    rows = reader.read("train")
    assert len(rows) == 240 and rows["labels"][0] == [] == rows["labels"][5] and rows["labels"][1]
    assert "2 of 240 image(s) have no label; kept" in caplog.text
    assert reader.label_names(rows) == NAMES  # the categories, in id order, seen or not
