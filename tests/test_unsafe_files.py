"""Checkpoints and weight files cannot run code (issue 19): every load is weights-only.

Each file here pickles an object whose `__reduce__` would create a marker file when unpickled by a full
(non-weights-only) load, as a `.ckpt` downloaded from a forum could. The marker must never appear; each command
stops with one `error:` line naming the file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, CodeRunningPickle, fast_overrides


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    """A file that looks like a Lightning checkpoint of mlcap, with code in its hyper-parameters."""
    torch.save(
        {
            "epoch": 0,
            "global_step": 1,
            "optimizer_states": [],
            "state_dict": {"w": torch.zeros(1)},
            "mlcap_layout": 3,
            "hyper_parameters": {"model": CodeRunningPickle(marker)},
        },
        path,
    )
    return path


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def _assert_refused(result: subprocess.CompletedProcess[str], path: Path, marker: Path) -> None:
    assert not marker.exists(), "a checkpoint or weight file ran code"
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and str(path) in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_full_load_of_the_payload_would_run_it(tmp_path: Path) -> None:
    """The payload is real: a full load creates the marker (so the tests below can fail)."""
    marker = tmp_path / "marker"
    path = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_predict_refuses_a_checkpoint_that_would_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    _assert_refused(
        _run("predict.py", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'out'}"), path, marker
    )


def test_train_refuses_a_checkpoint_to_resume_that_would_run_code(tiny_demo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    args = [
        *fast_overrides(tiny_demo, tmp_path / "cache"),
        f"ckpt_path={path}",
        f"hydra.run.dir={tmp_path / 'r'}",
    ]
    _assert_refused(_run("train.py", *args), path, marker)


def test_automatic_resume_refuses_a_last_checkpoint_that_would_run_code(
    tiny_demo: Path, tmp_path: Path
) -> None:
    """A planted `last.ckpt` in a run folder (the automatic resume) is refused the same way."""
    marker = tmp_path / "marker"
    run_dir = tmp_path / "r"
    args = [
        *fast_overrides(tiny_demo, tmp_path / "cache"),
        "trainer.max_epochs=1",
        f"hydra.run.dir={run_dir}",
    ]
    first = _run("train.py", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir / "metrics.json").unlink()  # now an interrupted run: the re-run resumes from last.ckpt
    last = _evil_checkpoint(run_dir / "checkpoints" / "last.ckpt", marker)
    _assert_refused(_run("train.py", *args), last, marker)


@pytest.mark.parametrize("name", ["resnet18"])
def test_timm_weight_file_that_would_run_code_is_refused(tiny_demo: Path, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": CodeRunningPickle(marker)}, path)
    args = [
        *fast_overrides(tiny_demo, tmp_path / "cache"),
        "model/image_encoder=timm",
        f"model.image_encoder.name={name}",
        f"model.image_encoder.weights={path}",
        f"hydra.run.dir={tmp_path / 'r'}",
    ]
    result = _run("train.py", *args)
    assert not marker.exists(), "a weight file ran code"
    assert result.returncode != 0
    assert str(path) in result.stderr and "refused" in result.stderr, result.stderr[-2000:]


def test_predict_never_replaces_an_input(tiny_demo: Path, tmp_path: Path) -> None:
    """output= the data's own train.csv, or the checkpoint itself, is refused before predicting; both intact."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_demo, root)
    run_dir = tmp_path / "r"
    args = [*fast_overrides(root, tmp_path / "cache"), "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
    assert _run("train.py", *args).returncode == 0
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    for target in (root / "train.csv", ckpt):
        before = target.read_bytes()
        result = _run(
            "predict.py", f"ckpt_path={ckpt}", f"output={target}", f"hydra.run.dir={tmp_path / 'p'}"
        )
        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: output=") and "never replaces an input" in last, result.stderr[-1500:]
        assert target.read_bytes() == before
