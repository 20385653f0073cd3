"""Threshold calibration: the tuned thresholds never score below 0.5 on the data they were tuned on."""

from __future__ import annotations

import pytest
import torch

from mlcap.calibration import calibrate, cross_fitted_f1, global_threshold, per_class_thresholds
from mlcap.metrics import decide_labels, samples_f1


def _data(rows: int = 300, classes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    target = (torch.rand(rows, classes, generator=generator) < 0.3).float()
    target[torch.arange(rows), torch.randint(classes, (rows,), generator=generator)] = 1.0
    # A model that is under-confident on class 0 and over-confident on class 1.
    probs = (0.6 * target + 0.4 * torch.rand(rows, classes, generator=generator)).clamp(0, 1)
    probs[:, 0] *= 0.6
    probs[:, 1] = (probs[:, 1] + 0.3).clamp(max=1)
    return probs, target


def test_global_and_per_class_thresholds_improve_samples_f1() -> None:
    probs, target = _data()
    base = float(samples_f1(decide_labels(probs, 0.5).int(), target.int()))
    threshold, global_f1 = global_threshold(probs, target)
    assert global_f1 >= base
    assert global_f1 == pytest.approx(float(samples_f1(decide_labels(probs, threshold).int(), target.int())))
    thresholds, class_f1 = per_class_thresholds(probs, target)
    assert len(thresholds) == probs.shape[1]
    assert class_f1 >= global_f1 > base
    assert thresholds[0] < thresholds[1]  # the under-confident class gets the lower threshold
    recomputed = samples_f1(decide_labels(probs, torch.tensor(thresholds)).int(), target.int())
    assert class_f1 == pytest.approx(float(recomputed), abs=1e-4)


def test_calibrate_modes() -> None:
    probs, target = _data(rows=50)
    assert calibrate(probs, target, "none")[0] is None
    assert isinstance(calibrate(probs, target, "global")[0], float)
    assert isinstance(calibrate(probs, target, "per_class")[0], list)
    with pytest.raises(ValueError, match="per_class"):
        calibrate(probs, target, "best")


def test_cross_fitted_estimate_is_not_above_the_in_sample_score() -> None:
    probs, target = _data(rows=400)
    _, in_sample = per_class_thresholds(probs, target)
    honest = cross_fitted_f1(probs, target, "per_class")
    base = float(samples_f1(decide_labels(probs, 0.5).int(), target.int()))
    assert base < honest <= in_sample
    assert cross_fitted_f1(probs, target, "none") == pytest.approx(base)
