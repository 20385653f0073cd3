"""Built-in synthetic demo data set in the exact on-disk format of COMP5329.

Why it exists: users, CI and the test-suite must be able to train the full image+caption fusion model in
minutes on a laptop CPU without the real (licensed, large) COMP5329 data.  The files are read by the same
reader as the real data, so writing them in *exactly* the same format (``train.csv`` with
``ImageID,Labels,Caption``, only the caption double-quoted, ``test.csv`` with ``ImageID,Caption``, RGB JPEGs
under ``data/``) exercises the real code path.  ``test_labels.csv`` is extra: it lets predictions on the demo
test split be scored.

The content (mlcap.data.demo_scene) is designed so that neither modality alone is enough; this module writes
it to files and keeps one complete set per parameters in the cache folder.

Everything is a pure function of ``seed`` (one numpy Generator per image, seeded with ``[seed, image_id]``):
the same parameters give byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mlcap.data.cache_folder import locked, unwritable
from mlcap.data.demo_scene import DEMO_LABEL_NAMES, MENTION_PROB, draw_image, make_caption, sample_labels

__all__ = ["DEMO_LABEL_NAMES", "MARKER_NAME", "MENTION_PROB", "ensure_demo", "generate_demo"]

DEMO = ("demo data", "data.root=<folder> moves only the demo data")
MARKER_NAME = "demo.json"
# Bump when the generated content changes, so cached demo sets made by an older generator are not reused.
GENERATOR_VERSION = 1


def _params(n_train: int, n_test: int, image_size: int, seed: int) -> dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "n_train": n_train,
        "n_test": n_test,
        "image_size": image_size,
        "seed": seed,
    }


def _check_params(n_train: int, n_test: int, image_size: int, seed: int) -> None:
    for name, value, low in (("n_train", n_train, 1), ("n_test", n_test, 1), ("image_size", image_size, 32)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"demo data: {name} must be an int >= {low}, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"demo data: seed must be a non-negative int, got {seed!r}")


def generate_demo(
    root: str | Path, n_train: int = 3000, n_test: int = 500, image_size: int = 64, seed: int = 0
) -> Path:
    """Write a demo data set into ``root`` (created if needed; existing demo files are overwritten).

    ``demo.json`` is removed first and written last, so its presence means the set is complete.  Prefer
    :func:`ensure_demo`, which also makes the write atomic and safe against concurrent callers.
    """
    _check_params(n_train, n_test, image_size, seed)
    root = Path(root)
    image_dir = root / "data"
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / MARKER_NAME).unlink(missing_ok=True)

    train_rows = ["ImageID,Labels,Caption\n"]
    test_rows = ["ImageID,Caption\n"]
    test_label_rows = ["ImageID,Labels\n"]
    for image_id in range(n_train + n_test):
        rng = np.random.default_rng([seed, image_id])
        labels = sample_labels(rng)
        caption = make_caption(rng, labels)
        if '"' in caption or "\n" in caption:  # the CSV lines below rely on it
            raise AssertionError(
                f"demo caption for image {image_id} contains a quote or newline: {caption!r}"
            )
        name = f"{image_id}.jpg"
        draw_image(rng, labels, image_size).save(image_dir / name, format="JPEG", quality=90)
        label_text = " ".join(str(lab) for lab in labels)
        # Written by hand: the csv module cannot quote only the caption column, as COMP5329's files do.
        if image_id < n_train:
            train_rows.append(f'{name},{label_text},"{caption}"\n')
        else:
            test_rows.append(f'{name},"{caption}"\n')
            test_label_rows.append(f"{name},{label_text}\n")

    for file_name, rows in (
        ("train.csv", train_rows),
        ("test.csv", test_rows),
        ("test_labels.csv", test_label_rows),
    ):
        with open(root / file_name, "w", encoding="utf-8", newline="") as f:
            f.writelines(rows)
    with open(root / MARKER_NAME, "w", encoding="utf-8", newline="") as f:
        json.dump(_params(n_train, n_test, image_size, seed), f, indent=2, sort_keys=True)
        f.write("\n")
    return root


def _read_marker(root: Path) -> dict[str, Any] | None:
    marker = root / MARKER_NAME
    if not marker.is_file():
        return None
    try:
        with open(marker, encoding="utf-8") as f:
            params = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise FileExistsError(
            f"demo data: marker {marker} is unreadable ({e}); delete {root} to regenerate the demo set"
        ) from e
    if not isinstance(params, dict):
        raise FileExistsError(
            f"demo data: marker {marker} is not a JSON object; delete {root} to regenerate it"
        )
    return params


def ensure_demo(
    root: str | Path, n_train: int = 3000, n_test: int = 500, image_size: int = 64, seed: int = 0
) -> Path:
    """Return ``root`` holding a complete demo set with these parameters, generating it on first use only.

    Generation goes to a temp dir next to ``root`` that is renamed into place, so a crash never leaves a
    half-written set at ``root``; a file lock at ``<root>.lock`` makes concurrent callers generate once.
    Refuses (FileExistsError) to touch a non-empty ``root`` that is not a demo set with the same parameters.
    """
    _check_params(n_train, n_test, image_size, seed)
    root = Path(root).absolute()
    wanted = _params(n_train, n_test, image_size, seed)
    if root.is_dir() and _read_marker(root) == wanted:
        return root  # complete (sets are renamed into place whole): no lock, so a read-only cache serves it
    with locked(Path(f"{root}.lock"), root.parent, DEMO):
        if root.exists():
            found = _read_marker(root) if root.is_dir() else None
            if found == wanted:
                return root
            if found is not None:
                raise FileExistsError(
                    f"demo data: {root} holds a demo set made with {found}, not the requested {wanted}; "
                    "delete it or choose another directory"
                )
            if not root.is_dir() or any(root.iterdir()):
                raise FileExistsError(
                    f"demo data: {root} exists and is not a demo data set (no {MARKER_NAME}); "
                    "refusing to overwrite it: delete it or choose another directory"
                )
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        except OSError as err:
            raise unwritable(root.parent, err, DEMO) from None
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the data set itself is not secret
            generate_demo(tmp, n_train=n_train, n_test=n_test, image_size=image_size, seed=seed)
            os.replace(tmp, root)  # replaces an empty root directory atomically
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise unwritable(tmp, err, DEMO) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root
