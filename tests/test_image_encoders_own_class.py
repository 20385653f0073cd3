"""A new image encoder is one class plus one YAML: a user's class in its own module (not in mlcap), named by a
config file in the user's own config folder, trains, is cached and predicts through the command lines, with
no edit to any mlcap file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, fast_overrides

# The user's encoder: a frozen random conv + pooling; the members of mlcap.models.contracts.ImageEncoder,
# the keys of conf/model/image_encoder/base.yaml plus embed_dim and num_labels, nothing of mlcap.
ENCODER_MODULE = """
import hashlib

import torch
from torch import nn


class TinyPool(nn.Module):
    def __init__(self, *, name, weights, pretrained, freeze, dropout, trainable_blocks, label_attention,
                 embed_dim, num_labels):
        super().__init__()
        self.name, self.freeze = name, freeze
        self.input_size, self.interpolation = (32, 32), "bilinear"
        self.mean = self.std = (0.5, 0.5, 0.5)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(8, embed_dim), nn.ReLU())
        if freeze:
            self.backbone.requires_grad_(False)

    @property
    def spatial(self):
        return False

    def cached_forward(self, images):
        return self.backbone(images)

    def cache_fingerprint(self):
        digest = hashlib.sha256()
        for tensor in self.backbone.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    def encode(self, images=None, features=None):
        if features is None:
            with torch.no_grad():
                features = self.cached_forward(images)
        return self.head(features.float()), None
"""

ENCODER_YAML = """\
# A user's image encoder: base.yaml's keys, its own class.
defaults:
  - base
  - _self_
_target_: user_encoders.TinyPool
name: tiny_pool
"""


def _run(script: str, *overrides: str, env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / script), *overrides], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_a_users_encoder_class_and_yaml_train_cache_and_predict(tiny_demo: Path, tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "user_encoders.py").write_text(ENCODER_MODULE)
    group = tmp_path / "conf" / "model" / "image_encoder"
    group.mkdir(parents=True)
    (group / "tiny_pool.yaml").write_text(ENCODER_YAML)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path / "code"), str(REPO)])}
    cache = tmp_path / "cache"
    train = [
        "model/image_encoder=tiny_pool",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        *fast_overrides(tiny_demo, cache),
        "trainer.max_epochs=1",
    ]
    _run("train.py", *train, f"hydra.run.dir={tmp_path / 'run'}", env=env, cwd=tmp_path)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "feature cache miss: computing tiny_pool" in log, log
    assert list((cache / "features").glob("tiny_pool-*.npy"))

    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    predicted = [f"ckpt_path={ckpt}", f"output={tmp_path / 'sub.csv'}", f"paths.cache_dir={cache}"]
    _run("predict.py", *predicted, f"hydra.run.dir={tmp_path / 'predict'}", env=env, cwd=tmp_path)
    rows = (tmp_path / "sub.csv").read_text().splitlines()
    assert len(rows) == 1 + 40  # header + the tiny demo's test rows

    # A second run of the same settings reads what the first cached: the encoder's features, not images.
    _run("train.py", *train, f"hydra.run.dir={tmp_path / 'again'}", env=env, cwd=tmp_path)
    again = (tmp_path / "again" / "train.log").read_text()
    assert "feature cache hit" in again and "feature cache miss" not in again, again
