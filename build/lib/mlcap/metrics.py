"""Competition metric (samples-averaged F1), the field's metrics, label decisions and the per-label tables.

Kaggle's "mean F1" equals ``sklearn.metrics.f1_score(average="samples", zero_division=0)``. torchmetrics has
no ``average="samples"``, so the per-row F1 is written by hand here (a few tensor ops) and checked against
sklearn in the tests. The field compares multi-label classifiers (on COCO) by mAP and by CP, CR, CF1, OP, OR,
OF1 at the threshold, as ML-GCN and ASL report them: `FieldMetrics`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torchmetrics
from sklearn.metrics import classification_report
from torchmetrics.functional.classification import multilabel_average_precision

FIELD_METRICS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")
AVERAGE_ROWS = ("micro avg", "macro avg", "weighted avg", "samples avg")


def decide_labels(probs: torch.Tensor, threshold: float | torch.Tensor = 0.5) -> torch.Tensor:
    """Bool ``[n, c]`` labels: ``probs >= threshold``, plus the top class where nothing passes.

    Every image has at least one label, so an empty prediction is always wrong; taking the argmax instead
    never lowers the samples F1. ``threshold`` is a scalar or a per-class tensor ``[c]``.
    """
    if probs.ndim != 2:
        raise ValueError(f"decide_labels expects probs of shape [n, c], got {tuple(probs.shape)}")
    if isinstance(threshold, torch.Tensor):
        if threshold.ndim > 1 or (threshold.ndim == 1 and threshold.shape[0] != probs.shape[1]):
            raise ValueError(
                f"Per-class threshold must have shape [{probs.shape[1]}] (one per class) or be a scalar, "
                f"got {tuple(threshold.shape)}"
            )
        threshold = threshold.to(device=probs.device, dtype=probs.dtype)
    labels = probs >= threshold
    empty = ~labels.any(dim=1)
    if empty.any():
        rows = empty.nonzero(as_tuple=True)[0]
        labels[rows, probs[rows].argmax(dim=1)] = True
    return labels


def _check_binary_pair(preds: torch.Tensor, target: torch.Tensor) -> None:
    """Raise unless preds/target are same-shaped [n, c] 0/1 tensors (thresholding is the caller's job)."""
    if preds.shape != target.shape or preds.ndim != 2:
        raise ValueError(
            f"preds and target must both be [n, c] with the same shape, got {tuple(preds.shape)} "
            f"and {tuple(target.shape)}"
        )
    for name, x in (("preds", preds), ("target", target)):
        if x.dtype != torch.bool and ((x != 0) & (x != 1)).any():
            raise ValueError(
                f"{name} must hold only 0/1 values; threshold probabilities first (e.g. with decide_labels)"
            )


def _row_f1(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row F1 = 2 tp / (|pred| + |true|); 0 when both are empty, as sklearn with zero_division=0."""
    p = preds.bool()
    t = target.bool()
    tp = (p & t).sum(dim=1).double()
    denom = (p.sum(dim=1) + t.sum(dim=1)).double()
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(denom))


def samples_f1(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Samples-averaged F1 of 0/1 ``[n, c]`` predictions (the competition metric) as a float scalar tensor."""
    _check_binary_pair(preds, target)
    if preds.shape[0] == 0:
        raise ValueError("samples_f1 needs at least one row")
    return _row_f1(preds, target).mean().float()


class SamplesF1(torchmetrics.Metric):
    """Samples-averaged F1 accumulated over batches and processes (sum of row F1s / row count).

    ``update`` takes 0/1 predictions: thresholding is the caller's job (see ``decide_labels``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    f1_sum: torch.Tensor
    n_rows: torch.Tensor

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("f1_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_rows", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        _check_binary_pair(preds, target)
        self.f1_sum += _row_f1(preds, target).sum()
        self.n_rows += preds.shape[0]

    def compute(self) -> torch.Tensor:
        # 0 rows gives 0 rather than NaN; torchmetrics already warns when compute runs before update.
        return (self.f1_sum / self.n_rows.clamp(min=1)).float()


def mean_average_precision(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mAP: torchmetrics' per-label average precision, averaged over the labels with at least one positive
    (torchmetrics' own macro average counts a label without positives as 0)."""
    with warnings.catch_warnings():  # its warning on labels without positives: those are left out below
        warnings.filterwarnings("ignore", message=".*No positive samples found in target.*")
        per_label = multilabel_average_precision(
            probs.float(), target.int(), num_labels=target.shape[1], average=None
        )
    present = target.sum(0) > 0
    return per_label[present].mean() if present.any() else torch.tensor(float("nan"))


def threshold_scores(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> dict[str, torch.Tensor]:
    """CP, CR, CF1 (per-class precision and recall averaged over the labels with at least one positive, and
    their harmonic mean) and OP, OR, OF1 (over all decisions at once), from per-label counts; 0 where empty."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    present = (tp + fn) > 0

    def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(b > 0, a / b.clamp(min=1e-12), torch.zeros_like(a))

    def f1(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return ratio(2 * p * r, p + r)

    cp = ratio(tp, tp + fp)[present].mean() if present.any() else torch.tensor(0.0, dtype=torch.float64)
    cr = ratio(tp, tp + fn)[present].mean() if present.any() else torch.tensor(0.0, dtype=torch.float64)
    op, o_r = ratio(tp.sum(), (tp + fp).sum()), ratio(tp.sum(), (tp + fn).sum())
    scores = {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": o_r, "OF1": f1(op, o_r)}
    return {name: value.float() for name, value in scores.items()}


def field_metrics(probs: torch.Tensor, preds: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """mAP of the probabilities and CP ... OF1 of the 0/1 decisions, against 0/1 targets [n, labels]."""
    _check_binary_pair(preds, target)
    p, t = preds.bool(), target.bool()
    counts = ((p & t).sum(0), (p & ~t).sum(0), (~p & t).sum(0))
    scores = {"mAP": mean_average_precision(probs, target), **threshold_scores(*counts)}
    return {name: float(scores[name]) for name in FIELD_METRICS}


class FieldMetrics(torchmetrics.Metric):
    """mAP, CP, CR, CF1, OP, OR, OF1 accumulated over batches and processes: `update(probs, preds, target)`.

    mAP keeps every probability (exact, as the papers report it: rows x labels floats)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_labels: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(num_labels, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, preds: torch.Tensor, target: torch.Tensor) -> None:
        _check_binary_pair(preds, target)
        p, t = preds.bool(), target.bool()
        self.tp += (p & t).sum(0)
        self.fp += (p & ~t).sum(0)
        self.fn += (~p & t).sum(0)
        self.probs.append(probs.detach().float())
        self.targets.append(target.detach().int())

    def compute(self) -> dict[str, torch.Tensor]:
        probs = torch.cat(self.probs) if isinstance(self.probs, list) else self.probs
        targets = torch.cat(self.targets) if isinstance(self.targets, list) else self.targets
        return {"mAP": mean_average_precision(probs, targets), **threshold_scores(self.tp, self.fp, self.fn)}


def classification_table(
    preds: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, label_names: Sequence[object]
) -> pd.DataFrame:
    """Per-label precision/recall/f1/support plus micro/macro/weighted/samples averages (study Tables 6, 7).

    Column j of ``preds``/``target`` is label ``label_names[j]``. The index holds the label names as strings
    followed by the names in ``AVERAGE_ROWS``.
    """
    y_pred = preds.detach().cpu().numpy() if isinstance(preds, torch.Tensor) else np.asarray(preds)
    y_true = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    if y_pred.shape != y_true.shape or y_pred.ndim != 2:
        raise ValueError(
            f"preds and target must both be [n, c] with the same shape, got {y_pred.shape} and {y_true.shape}"
        )
    if len(label_names) != y_true.shape[1]:
        raise ValueError(
            f"label_names has {len(label_names)} entries but preds/target have {y_true.shape[1]} columns; "
            "pass one label name per column"
        )
    for name, x in (("preds", y_pred), ("target", y_true)):
        if not np.isin(x, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0/1 values; threshold probabilities first")
    names = [str(name) for name in label_names]
    report = classification_report(
        y_true.astype(int),
        y_pred.astype(int),
        labels=list(range(len(names))),
        target_names=names,
        output_dict=True,
        zero_division=0,
    )
    table = pd.DataFrame.from_dict(report, orient="index").loc[[*names, *AVERAGE_ROWS]]
    table = table.rename(columns={"f1-score": "f1"})[["precision", "recall", "f1", "support"]]
    table["support"] = table["support"].astype(int)
    return table
