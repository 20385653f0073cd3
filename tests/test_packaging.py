"""mlcap installed from its wheel, not from a clone: the config files travel with the package.

The wheel is built from this checkout and installed into a temporary venv (no network: no build isolation
where setuptools is at hand, no dependencies fetched: the venv sees this Python's packages), then mlcap's
command-line modules run from a folder far from the clone.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv's python with mlcap installed from a wheel of this checkout."""
    work = tmp_path_factory.mktemp("wheel")
    isolation = [] if importlib.util.find_spec("setuptools") else ["--use-pep517"]
    no_isolation = ["--no-build-isolation"] if not isolation else []
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *no_isolation, "-w", str(work), str(ROOT)],
        cwd=work,
    )
    (wheel,) = work.glob("mlcap-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=work)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=work)
    return python


def _env() -> dict[str, str]:
    """Nothing points at the clone: no PYTHONPATH, the working folder elsewhere."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_the_wheel_holds_the_config_files(installed_python: Path, tmp_path: Path) -> None:
    code = (
        "import mlcap, mlcap.config_files as c; print(mlcap.__file__); print(c.CONF_DIR); "
        "print(sorted(p.relative_to(c.CONF_DIR).as_posix() for p in c.CONF_DIR.rglob('*.yaml')))"
    )
    out = _run([str(installed_python), "-c", code], cwd=tmp_path, env=_env()).stdout.splitlines()
    venv = installed_python.parents[1]
    assert Path(out[0]).is_relative_to(venv), f"imported {out[0]}, not the installed wheel"
    assert Path(out[1]).is_relative_to(venv) and not Path(out[1]).is_symlink()
    shipped = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    assert eval(out[2]) == shipped  # noqa: S307 - our own print of a list of strings


def test_report_and_eda_run_from_the_installed_package(installed_python: Path, tmp_path: Path) -> None:
    help_text = _run([str(installed_python), "-m", "mlcap.report", "--help"], cwd=tmp_path, env=_env()).stdout
    assert "usage:" in help_text and "sweep" in help_text
    # Composes conf/eda.yaml and its data group from the packaged files (Hydra's --cfg: no data is read).
    composed = _run(
        [str(installed_python), "-m", "mlcap.eda", "--cfg", "job"], cwd=tmp_path, env=_env()
    ).stdout
    assert "data:" in composed and "_target_: mlcap.data" in composed
    # The settings check lists config group options from the same files.
    code = (
        "from mlcap.config_files import group_options; "
        "print(group_options('model/loss'), group_options('model/image_encoder'))"
    )
    listed = _run([str(installed_python), "-c", code], cwd=tmp_path, env=_env()).stdout
    assert "'bce'" in listed and "'small_cnn'" in listed
