"""Decision thresholds tuned on the validation split to maximise samples-F1 (at least one label per image).

Written by hand: sklearn's TunedThresholdClassifierCV tunes one binary threshold per estimator, not a
threshold vector under a samples-averaged multi-label objective with the at-least-one-label rule.
"""

from __future__ import annotations

import numpy as np
import torch

from mlcap.metrics import decide_labels, samples_f1

THRESHOLD_GRID = tuple(np.round(np.arange(0.05, 0.96, 0.025), 3))


def _score(probs: torch.Tensor, target: torch.Tensor, threshold: float | torch.Tensor) -> float:
    return float(samples_f1(decide_labels(probs, threshold).int(), target.int()))


def global_threshold(
    probs: torch.Tensor, target: torch.Tensor, grid: tuple[float, ...] = THRESHOLD_GRID
) -> tuple[float, float]:
    """The single threshold with the best samples-F1, and that F1 (ties: the value closest to 0.5)."""
    scores = [(_score(probs, target, t), -abs(t - 0.5), t) for t in grid]
    best = max(scores)
    return float(best[2]), best[0]


def per_class_thresholds(
    probs: torch.Tensor, target: torch.Tensor, grid: tuple[float, ...] = THRESHOLD_GRID, rounds: int = 2
) -> tuple[list[float], float]:
    """Coordinate ascent from the best global threshold: each class's threshold in turn, `rounds` passes."""
    start, best_score = global_threshold(probs, target, grid)
    thresholds = torch.full((probs.shape[1],), start, dtype=probs.dtype)
    for _ in range(rounds):
        for label in range(probs.shape[1]):
            for value in grid:
                trial = thresholds.clone()
                trial[label] = value
                score = _score(probs, target, trial)
                if score > best_score + 1e-9:
                    best_score, thresholds = score, trial
    return [round(float(t), 4) for t in thresholds], best_score


def calibrate(
    probs: torch.Tensor, target: torch.Tensor, mode: str
) -> tuple[float | list[float] | None, float]:
    """Threshold(s) for `mode` (none | global | per_class) and the validation samples-F1 they reach."""
    if mode == "global":
        return global_threshold(probs, target)
    if mode == "per_class":
        return per_class_thresholds(probs, target)
    if mode == "none":
        return None, float("nan")
    raise ValueError(f"threshold_calibration must be none, global or per_class, got {mode!r}")


def cross_fitted_f1(probs: torch.Tensor, target: torch.Tensor, mode: str, seed: int = 0) -> float:
    """An honest estimate of what calibration gains on unseen rows: tune on one half, score the other, swap.

    Thresholds tuned and scored on the same validation rows overstate the gain, most of all per class.
    """
    if mode == "none":
        return float(samples_f1(decide_labels(probs, 0.5).int(), target.int()))
    order = torch.randperm(len(probs), generator=torch.Generator().manual_seed(seed))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    total = 0.0
    for tune, score in (halves, halves[::-1]):
        threshold, _ = calibrate(probs[tune], target[tune], mode)
        assert threshold is not None
        value = threshold if isinstance(threshold, float) else torch.tensor(threshold)
        total += _score(probs[score], target[score], value) * len(score)
    return total / len(probs)
