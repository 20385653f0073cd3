"""Expected errors leave train.py and predict.py as one line `error: ...` naming the file, row or key (issue 19,
hostile findings 5 and 9); bugs keep their traceback, and MLCAP_DEBUG=1 keeps it for expected errors too.

Each command runs in a subprocess on tiny settings, as a user runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, CodeRunningPickle, fast_overrides
from hydra.errors import InstantiationException

from mlcap.console import errors_in_one_line
from mlcap.data.comp5329 import DataFormatError
from mlcap.predict import check_output, read_label_file

# The tiny model of fast_overrides without the demo's own keys (for data=comp5329 on a copy of the demo files).
_TINY_MODEL = [
    "model/image_encoder=small_cnn",
    "data.image_size=32",
    "data.batch_size=32",
    "data.num_workers=0",
    "model.word_dim=16",
    "model.hidden_dim=16",
    "model.embed_dim=32",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


def _run(
    script: str, *args: str, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _one_line(result: subprocess.CompletedProcess[str], *named: str) -> str:
    """The command failed with exit code 1 and one `error:` line naming each of `named`, no traceback."""
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    for name in named:
        assert name in last, last
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    return last


def _comp5329_copy(tiny_demo: Path, root: Path) -> Path:
    """The demo's files as a COMP5329 data set of one's own (no demo marker)."""
    shutil.copytree(tiny_demo, root)
    (root / "demo.json").unlink()
    return root


def _labels_on_line_3(root: Path, labels: str) -> None:
    """Give the third line of the copy's train.csv (its second row) the label field `labels`."""
    lines = (root / "train.csv").read_text().splitlines()
    image_id, _, rest = lines[2].split(",", 2)
    lines[2] = f"{image_id},{labels},{rest}"
    (root / "train.csv").write_text("\n".join(lines) + "\n")


# Finding 5: every expected error of train.py is one line.


def test_a_label_20_row_is_one_line_naming_file_and_row(tiny_demo: Path, tmp_path: Path) -> None:
    root = _comp5329_copy(tiny_demo, tmp_path / "data")
    _labels_on_line_3(root, "1 20")
    args = [*_TINY_MODEL, "data=comp5329", f"data.root={root}", f"paths.cache_dir={tmp_path / 'cache'}"]
    result = _run("train.py", *args, f"hydra.run.dir={tmp_path / 'r'}")
    _one_line(result, str(root / "train.csv"), "line 3", "[20]")

    debug = _run("train.py", *args, f"hydra.run.dir={tmp_path / 'r2'}", env={"MLCAP_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "DataFormatError" in debug.stderr


def test_a_sweep_job_records_an_expected_error_in_one_line(tiny_demo: Path, tmp_path: Path) -> None:
    """A sweep's job: one line in its failed.json (no traceback) and in the console."""
    root = _comp5329_copy(tiny_demo, tmp_path / "data")
    _labels_on_line_3(root, "20")
    sweep_dir = tmp_path / "sweep"
    result = _run(
        "train.py",
        "-m",
        *_TINY_MODEL,
        "data=comp5329",
        f"data.root={root}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "seed=0",
        f"hydra.sweep.dir={sweep_dir}",
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    (failed,) = sweep_dir.glob("*/failed.json")
    record = json.loads(failed.read_text())
    assert str(root / "train.csv") in record["error"] and "line 3" in record["error"]
    assert "\n" not in record["error"] and record["traceback"] == ""
    assert any("failed: " in line and "line 3" in line for line in output.splitlines())


def test_an_unknown_timm_model_is_one_line_naming_the_key(tiny_demo: Path, tmp_path: Path) -> None:
    args = [
        *fast_overrides(tiny_demo, tmp_path / "cache"),
        "model/image_encoder=timm",
        "model.image_encoder.name=not_a_model",
        f"hydra.run.dir={tmp_path / 'r'}",
    ]
    _one_line(_run("train.py", *args), "model.image_encoder.name='not_a_model'")


def test_a_seed_numpy_cannot_take_is_a_setting_error_before_anything_runs(
    tiny_demo: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "r"
    args = [*fast_overrides(tiny_demo, tmp_path / "cache"), "seed=4294967296", f"hydra.run.dir={run_dir}"]
    _one_line(_run("train.py", *args), "seed=4294967296", "4294967295")
    assert not run_dir.exists()


def test_a_cache_dir_that_cannot_be_written_is_one_line_naming_the_key(
    tiny_demo: Path, tmp_path: Path
) -> None:
    """A cache folder under a regular file fails for root too (chmod does not stop root)."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    cache = afile / "cache"
    args = [*fast_overrides(tiny_demo, cache), f"hydra.run.dir={tmp_path / 'r'}"]
    _one_line(_run("train.py", *args), "paths.cache_dir", str(cache))


def test_a_run_folder_that_cannot_be_made_is_one_line_naming_the_key(tiny_demo: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    args = [*fast_overrides(tiny_demo, tmp_path / "cache"), f"hydra.run.dir={afile / 'run'}"]
    _one_line(_run("train.py", *args), "hydra.run.dir", str(afile / "run"))


def test_bugs_keep_their_traceback_and_wrapped_expected_errors_are_one_line() -> None:
    with pytest.raises(KeyError), errors_in_one_line():
        raise KeyError("a bug")
    with pytest.raises(InstantiationException), errors_in_one_line():
        raise InstantiationException("Error in call to target") from TypeError("a bug")
    with pytest.raises(SystemExit, match=r"^error: data\.csv, line 3: bad$"), errors_in_one_line():
        raise InstantiationException("Error in call to target") from DataFormatError(
            "data.csv, line 3:\n bad"
        )
    with pytest.raises(ValueError, match="operands could not be broadcast"), errors_in_one_line():
        np.ones(2) + np.ones(3)  # a library's ValueError deep in the work: a bug, with its traceback
    with (
        pytest.raises(SystemExit, match=r"^error: output=a\.ckpt is ckpt_path=a\.ckpt"),
        errors_in_one_line(),
    ):
        check_output(Path("a.ckpt"), Path("a.ckpt"), None, None)  # mlcap's own ValueError: one line


# Finding 9.


def _labels_file(path: Path, rows: list[str]) -> Path:
    path.write_text("ImageID,Labels\n" + "\n".join(rows) + "\n")
    return path


def test_labels_csv_with_a_repeated_image_names_file_and_lines(tmp_path: Path) -> None:
    path = _labels_file(tmp_path / "labels.csv", ["1.jpg,1", "2.jpg,2", "1.jpg,3"])
    with pytest.raises(
        ValueError, match=rf"labels_csv={path}: image 1.jpg has more than one row \(lines 2, 4"
    ):
        read_label_file(path, ["1", "2", "3"])


def test_labels_csv_with_a_non_integer_label_names_file_line_and_label(tmp_path: Path) -> None:
    path = _labels_file(tmp_path / "labels.csv", ["1.jpg,1", "", "2.jpg,2 1.5"])
    with pytest.raises(ValueError, match=rf"labels_csv={path}, line 4 \(2.jpg\): label\(s\) \['1.5'\]"):
        read_label_file(path, ["1", "2", "3"])


def test_a_fifo_as_labels_csv_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    code = f"from mlcap.predict import check_output, read_label_file; read_label_file({str(fifo)!r}, ['1'])"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and f"labels_csv={fifo} is not allowed" in result.stderr


def test_a_fifo_as_the_train_csv_is_refused_naming_it(tiny_demo: Path, tmp_path: Path) -> None:
    root = _comp5329_copy(tiny_demo, tmp_path / "data")
    (root / "train.csv").unlink()
    os.mkfifo(root / "train.csv")
    args = [*_TINY_MODEL, "data=comp5329", f"data.root={root}", f"paths.cache_dir={tmp_path / 'cache'}"]
    result = _run("train.py", *args, f"hydra.run.dir={tmp_path / 'r'}", timeout=120)
    _one_line(result, f"data.train_csv={root / 'train.csv'}", "not a regular file")


def test_a_folder_of_other_files_is_not_taken_as_a_run_folder(tiny_demo: Path, tmp_path: Path) -> None:
    """hydra.run.dir=<the data root> is refused before anything is written there."""
    root = tmp_path / "data"
    shutil.copytree(tiny_demo, root)
    before = sorted(p.name for p in root.iterdir())
    args = [*fast_overrides(root, tmp_path / "cache"), f"hydra.run.dir={root}"]
    _one_line(_run("train.py", *args), f"hydra.run.dir={root}", "test.csv")
    assert sorted(p.name for p in root.iterdir()) == before
    sweep = [*fast_overrides(root, tmp_path / "cache"), "seed=0,1", f"hydra.sweep.dir={root}"]
    _one_line(_run("train.py", "-m", *sweep), f"hydra.sweep.dir={root}", "test.csv")
    assert sorted(p.name for p in root.iterdir()) == before


def test_a_swept_key_nothing_reads_is_refused_before_any_job(tiny_demo: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    args = [*fast_overrides(tiny_demo, tmp_path / "cache"), "+foo=1,2", f"hydra.sweep.dir={sweep_dir}"]
    _one_line(_run("train.py", "-m", *args), "+foo", "no part of the config reads foo")
    assert not sweep_dir.exists()


def test_a_sentence_model_whose_weights_would_run_code_is_one_line(tiny_demo: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from test_bring_your_own import tiny_sentence_model

    folder = tiny_sentence_model(tmp_path / "st")
    marker = tmp_path / "marker"
    state: dict[str, object] = dict(load_file(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    state["extra"] = CodeRunningPickle(marker)
    torch.save(state, folder / "pytorch_model.bin")
    args = [
        *fast_overrides(tiny_demo, tmp_path / "cache"),
        "model.text_encoder=sentence",
        f"model.sentence_model={folder}",
        f"hydra.run.dir={tmp_path / 'r'}",
    ]
    _one_line(_run("train.py", *args), f"model.sentence_model={folder} is refused")
    assert not marker.exists()
