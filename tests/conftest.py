"""Shared test helpers: configs composed the way train.py composes them, tiny demo data made once per session,
and the real COMP5329 sample for the real-data tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from mlcap.data.demo import ensure_demo

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# The real COMP5329 sample: MLCAP_SAMPLE_DIR, else ../shared/data/comp5329-sample. Tests take it through the
# `real_sample` fixture only, which skips them where it is absent and marks them real_data (-m "not real_data").
SAMPLE = Path(os.environ.get("MLCAP_SAMPLE_DIR", REPO.parent / "shared" / "data" / "comp5329-sample"))
TINY_DEMO = {"n_train": 240, "n_test": 40, "image_size": 32, "seed": 0}


class CodeRunningPickle:
    """What a malicious pickle holds: unpickled, it runs `touch <marker>`; a safe loader never makes the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - what a malicious pickle does
        return (os.system, (f"touch {self.marker}",))


def compose_config(
    config_name: str,
    *overrides: str,
    output_dir: str | Path | None = None,
    return_hydra_config: bool = False,
) -> DictConfig:
    """conf/<config_name>.yaml with the overrides, as the command line composes it.

    output_dir sets paths.output_dir (Hydra's run folder, which only a Hydra run resolves) for tasks run
    in-process; return_hydra_config keeps the `hydra` node (sweeper, callbacks, sweep.dir).
    """
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_demo(tmp_path_factory.mktemp("demo") / "tiny", **TINY_DEMO)


def fast_overrides(demo_root: Path, cache_dir: Path) -> list[str]:
    """Overrides that make a full training run take seconds: tiny data, small model, few epochs."""
    return [
        f"data.root={demo_root}",
        f"data.demo.n_train={TINY_DEMO['n_train']}",
        f"data.demo.n_test={TINY_DEMO['n_test']}",
        f"data.demo.image_size={TINY_DEMO['image_size']}",
        "data.image_size=32",
        "data.batch_size=32",
        "data.num_workers=0",
        f"paths.cache_dir={cache_dir}",
        "model.word_dim=16",
        "model.hidden_dim=16",
        "model.embed_dim=32",
        "trainer.max_epochs=3",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]


@pytest.fixture
def compose_train(tiny_demo: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml with fast overrides plus the test's own; output goes to tmp_path/run."""

    def _compose(*overrides: str) -> DictConfig:
        return compose_config(
            "train", *fast_overrides(tiny_demo, tmp_path / "cache"), *overrides, output_dir=tmp_path / "run"
        )

    return _compose


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The real COMP5329 sample (train.csv, test.csv, data/); the test is skipped where it is absent."""
    if not (SAMPLE / "train.csv").is_file():
        pytest.skip(f"the real COMP5329 sample is absent: {SAMPLE} (set MLCAP_SAMPLE_DIR)")
    return SAMPLE


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that takes the real sample is a real_data test, so `-m "not real_data"` leaves them all out."""
    for item in items:
        if "real_sample" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)


@contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A real tmpfs at `where` (root only: skipped elsewhere), unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
