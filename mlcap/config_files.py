"""Where mlcap's config files are, for the modules that compose or read them outside train.py/predict.py.

One path for a clone and an installed wheel alike: `mlcap/conf` is a link to the repository's `conf/` in a
clone (and an editable install), and the packaged copy of it in a wheel (pyproject.toml's package-data). A
checkout made without symbolic links (git's core.symlinks=false) holds a text file there: then the clone's
conf/ beside the package.
"""

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[1] / "conf"


def group_options(group: str) -> list[str]:
    """The options of a config group (`model/image_encoder` -> ["base", "efficientnet_lite0", ...]), as Hydra lists them."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
