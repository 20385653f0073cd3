"""Reader for COCO's own annotation files (`data=coco`): `captions_*.json` + `instances_*.json`.

Rows are the images of the captions file, in its order, each with all its captions (COCO has five or more).
Labels are the category names of the instances file (the model's outputs in category-id order); an image with
no instance gets no label, is kept and counted in a warning. Anything inconsistent (a duplicate image id, a
caption or instance of an unknown image, an unknown category id) is an error naming the file and the id.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from mlcap.data.comp5329 import DataFormatError
from mlcap.data.reader import Split, check_unique, existing, resolve, rows_frame, warn_unlabelled


def _load(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not valid UTF-8 ({err.reason})") from None
    missing = [key for key in keys if not isinstance(data, dict) or not isinstance(data.get(key), list)]
    if missing:
        raise DataFormatError(f"{path}: no list {missing[0]!r}; a COCO annotation file has {list(keys)}")
    return data


def _field(item: Any, key: str, path: Path, what: str, index: int) -> Any:
    if not isinstance(item, dict) or key not in item:
        raise DataFormatError(f"{path}: {what} #{index} has no {key!r}: {str(item)[:80]}")
    return item[key]


class CocoReader:
    """COCO captions (+ instances for labels) as rows (`mlcap.data.reader.CaptionReader`)."""

    def __init__(
        self,
        root: str,
        train_captions: str,
        train_instances: str,
        predict_captions: str,
        image_dir: str,
        predict_instances: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.captions = {"train": train_captions, "predict": predict_captions}
        self.instances = {"train": train_instances, "predict": predict_instances}
        self.image_dir = resolve(self.root, image_dir)
        self.categories: list[str] | None = None

    def prepare(self) -> None:
        """The files are the user's: nothing to make."""

    def describe(self, split: Split) -> str:
        return str(resolve(self.root, self.captions[split]))

    def label_names(self, train: pd.DataFrame) -> list[str]:
        if self.categories is None:
            path = existing(self.root, self.instances["train"], "data.train_instances")
            self.categories = self._categories(_load(path, ("annotations", "categories")), path)[1]
        return list(self.categories)

    def _categories(self, data: dict[str, Any], path: Path) -> tuple[dict[int, str], list[str]]:
        names: dict[int, str] = {}
        for i, cat in enumerate(data["categories"]):
            cat_id, name = _field(cat, "id", path, "category", i), _field(cat, "name", path, "category", i)
            if cat_id in names or name in names.values():
                raise DataFormatError(
                    f"{path}: category id {cat_id} ({name!r}) appears twice in 'categories'"
                )
            names[cat_id] = str(name)
        return names, [names[i] for i in sorted(names)]

    def read(self, split: Split) -> pd.DataFrame:
        key = "train_captions" if split == "train" else "predict_captions"
        path = existing(self.root, self.captions[split], f"data.{key}")
        data = _load(path, ("images", "annotations"))
        images = [
            (_field(im, "id", path, "image", i), str(_field(im, "file_name", path, "image", i)))
            for i, im in enumerate(data["images"])
        ]
        rows = [
            {"image_id": name, "path": self.image_dir / name, "source": f"{path}, image id {image_id}"}
            for image_id, name in images
        ]
        table = rows_frame(rows, labelled=False)
        table["id"] = [image_id for image_id, _ in images]
        check_unique(table.assign(image_id=table["id"]), path, what="image id")
        check_unique(table, path, what="file_name")
        captions: dict[Any, list[str]] = defaultdict(list)
        known = set(table["id"])
        for i, ann in enumerate(data["annotations"]):
            image_id = _field(ann, "image_id", path, "annotation", i)
            if image_id not in known:
                raise DataFormatError(
                    f"{path}: caption annotation id {ann.get('id', f'#{i}')} is for image id {image_id}, which is "
                    "not in its 'images'"
                )
            caption = _field(ann, "caption", path, "annotation", i)
            if not isinstance(caption, str):
                raise DataFormatError(
                    f"{path}: caption annotation id {ann.get('id', f'#{i}')} is not a string"
                )
            captions[image_id].append(caption)
        lacking = [image_id for image_id in table["id"] if not captions[image_id]]
        if lacking:
            raise DataFormatError(
                f"{path}: image id(s) {lacking[:5]} have no caption; remove them or add captions"
            )
        table["captions"] = [captions[image_id] for image_id in table["id"]]
        instances = self.instances[split]
        if instances is not None:
            ikey = "train_instances" if split == "train" else "predict_instances"
            table["labels"] = self._labels(existing(self.root, instances, f"data.{ikey}"), table, split)
        return table.drop(columns="id")

    def _labels(self, path: Path, table: pd.DataFrame, split: Split) -> list[list[str]]:
        """Category names per image, from the instances file (each name once, in annotation order)."""
        data = _load(path, ("annotations", "categories"))
        names, ordered = self._categories(data, path)
        if split == "train":
            self.categories = ordered
        labels: dict[Any, dict[str, None]] = {image_id: {} for image_id in table["id"]}
        for i, ann in enumerate(data["annotations"]):
            image_id = _field(ann, "image_id", path, "annotation", i)
            category = _field(ann, "category_id", path, "annotation", i)
            ann_id = ann.get("id", f"#{i}")
            if category not in names:
                raise DataFormatError(
                    f"{path}: annotation id {ann_id} has category id {category}, which is not in 'categories' "
                    f"(ids {sorted(names)[:10]}...)"
                )
            if image_id not in labels:
                raise DataFormatError(
                    f"{path}: annotation id {ann_id} is for image id {image_id}, which the captions file lacks"
                )
            labels[image_id][names[category]] = None
        rows = [list(labels[image_id]) for image_id in table["id"]]
        warn_unlabelled(sum(not row for row in rows), len(rows), path)
        return rows
