"""Samples F1, the field's metrics (mAP, CP ... OF1), label decisions and report tables, against scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    f1_score,
    precision_score,
    recall_score,
)

from mlcap.metrics import (
    AVERAGE_ROWS,
    FieldMetrics,
    SamplesF1,
    classification_table,
    decide_labels,
    field_metrics,
    mean_average_precision,
    samples_f1,
)


def _random_pair(n: int, c: int, seed: int, p: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    preds = (torch.rand(n, c, generator=g) < p).long()
    target = (torch.rand(n, c, generator=g) < p).long()
    target[0] = 0  # a row with no true label ...
    preds[0] = 0  # ... and no predicted label: scores 0 like sklearn zero_division=0
    target[1] = 0  # no true label but a prediction
    preds[1, 0] = 1
    return preds, target


def _sklearn_samples_f1(preds: torch.Tensor, target: torch.Tensor) -> float:
    return float(f1_score(target.numpy(), preds.numpy(), average="samples", zero_division=0))


@pytest.mark.parametrize(("n", "c", "seed"), [(5, 3, 0), (40, 18, 1), (200, 18, 2), (7, 2, 3)])
def test_samples_f1_matches_sklearn(n: int, c: int, seed: int) -> None:
    preds, target = _random_pair(n, c, seed)
    assert samples_f1(preds, target).item() == pytest.approx(_sklearn_samples_f1(preds, target), abs=1e-6)
    assert samples_f1(preds.bool(), target.float()).item() == pytest.approx(
        _sklearn_samples_f1(preds, target), abs=1e-6
    )


def test_samples_f1_simple_values() -> None:
    target = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    preds = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 0]])
    # rows: 2*1/(1+2) = 2/3, both empty = 0, perfect = 1
    assert samples_f1(preds, target).item() == pytest.approx((2 / 3 + 0 + 1) / 3)


@pytest.mark.parametrize(("n", "c", "seed", "batch"), [(50, 18, 4, 7), (200, 5, 5, 64), (3, 2, 6, 1)])
def test_samples_f1_metric_accumulates_batches(n: int, c: int, seed: int, batch: int) -> None:
    preds, target = _random_pair(n, c, seed)
    metric = SamplesF1()
    for start in range(0, n, batch):
        metric.update(preds[start : start + batch], target[start : start + batch])
    assert metric.compute().item() == pytest.approx(_sklearn_samples_f1(preds, target), abs=1e-6)
    metric.reset()
    metric.update(preds[:2], target[:2])
    assert metric.compute().item() == pytest.approx(_sklearn_samples_f1(preds[:2], target[:2]), abs=1e-6)


def test_samples_f1_metric_states_of_processes_combine_to_the_f1_of_all_rows() -> None:
    """Under DDP each process updates on its own rows and compute() combines their states by their reductions:
    the result is the F1 over all rows, not a mean of the processes' F1s (here: unequal shards, merged)."""
    preds, target = _random_pair(50, 18, 9)
    ranks = [SamplesF1(), SamplesF1()]
    ranks[0].update(preds[:37], target[:37])
    ranks[1].update(preds[37:], target[37:])
    ranks[0].merge_state(ranks[1])
    assert ranks[0].compute().item() == pytest.approx(_sklearn_samples_f1(preds, target), abs=1e-6)


def test_samples_f1_rejects_probabilities_and_shape_mismatch() -> None:
    target = torch.tensor([[1, 0]])
    with pytest.raises(ValueError, match="0/1"):
        samples_f1(torch.tensor([[0.7, 0.2]]), target)
    with pytest.raises(ValueError, match="same shape"):
        samples_f1(torch.tensor([[1, 0, 0]]), target)
    with pytest.raises(ValueError, match="0/1"):
        SamplesF1().update(torch.tensor([[0.7, 0.2]]), target)


def test_decide_labels_threshold_and_at_least_one() -> None:
    probs = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.4, 0.3], [0.5, 0.5, 0.0]])
    labels = decide_labels(probs)
    assert labels.dtype == torch.bool
    expected = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.bool)
    assert torch.equal(labels, expected)  # row 1: nothing passes -> argmax; row 2: >= is inclusive
    assert bool(decide_labels(torch.zeros(4, 3)).any(dim=1).all())


def test_decide_labels_per_class_threshold() -> None:
    probs = torch.tensor([[0.3, 0.3, 0.9], [0.05, 0.8, 0.1]])
    labels = decide_labels(probs, torch.tensor([0.2, 0.5, 0.95]))
    assert torch.equal(labels, torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=torch.bool))
    assert torch.equal(decide_labels(probs, torch.tensor(0.25)), decide_labels(probs, 0.25))
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        decide_labels(probs, torch.tensor([0.5, 0.5]))


def test_classification_table_matches_sklearn() -> None:
    preds, target = _random_pair(60, 4, 7, p=0.4)
    label_ids = [1, 2, 3, 13]
    table = classification_table(preds, target, label_ids)
    assert list(table.columns) == ["precision", "recall", "f1", "support"]
    assert list(table.index) == ["1", "2", "3", "13", *AVERAGE_ROWS]
    report = classification_report(
        target.numpy(), preds.numpy(), target_names=["1", "2", "3", "13"], output_dict=True, zero_division=0
    )
    for row in table.index:
        assert table.loc[row, "precision"] == pytest.approx(report[row]["precision"])
        assert table.loc[row, "recall"] == pytest.approx(report[row]["recall"])
        assert table.loc[row, "f1"] == pytest.approx(report[row]["f1-score"])
        assert table.loc[row, "support"] == report[row]["support"]
    assert table.loc["samples avg", "f1"] == pytest.approx(samples_f1(preds, target).item())
    assert table.loc["3", "support"] == int(target[:, 2].sum())
    # numpy input and a label that is never predicted or present give the same kind of table
    np_preds = preds.numpy().copy()
    np_target = target.numpy().copy()
    np_preds[:, 3] = 0
    np_target[:, 3] = 0
    np_table = classification_table(np_preds, np_target, label_ids)
    assert np_table.loc["13"].tolist() == [0.0, 0.0, 0.0, 0]


def test_classification_table_errors() -> None:
    preds, target = _random_pair(10, 3, 8)
    with pytest.raises(ValueError, match="label_names has 2 entries"):
        classification_table(preds, target, [1, 2])
    with pytest.raises(ValueError, match="0/1"):
        classification_table(np.full((10, 3), 0.5), target, [1, 2, 3])


@pytest.mark.parametrize(("n", "c", "seed"), [(40, 5, 0), (200, 19, 1), (7, 3, 2)])
def test_map_matches_sklearn_average_precision_over_labels_with_positives(n: int, c: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = rng.random((n, c)).astype(np.float32)
    target = (rng.random((n, c)) < 0.3).astype(int)
    target[:, 0] = 0  # a label without positives (COMP5329's 12) is left out, not counted as 0
    target[0, 1] = 1
    present = [j for j in range(c) if target[:, j].any()]
    expected = np.mean([average_precision_score(target[:, j], probs[:, j]) for j in present])
    assert float(mean_average_precision(torch.from_numpy(probs), torch.from_numpy(target))) == pytest.approx(
        expected, abs=1e-6
    )


def test_field_metrics_are_ml_gcns_cp_cr_cf1_op_or_of1_and_accumulate() -> None:
    rng = np.random.default_rng(3)
    probs = torch.from_numpy(rng.random((60, 6)).astype(np.float32))
    target = torch.from_numpy((rng.random((60, 6)) < 0.4).astype(int))
    target[:, 5] = 0
    preds = decide_labels(probs, 0.5).int()
    got = field_metrics(probs, preds, target)
    y, p = target.numpy(), preds.numpy()
    present = y.sum(0) > 0
    cp = precision_score(y, p, average=None, zero_division=0)[present].mean()
    cr = recall_score(y, p, average=None, zero_division=0)[present].mean()
    op, o_r = precision_score(y, p, average="micro"), recall_score(y, p, average="micro")
    expected = {
        "CP": cp,
        "CR": cr,
        "CF1": 2 * cp * cr / (cp + cr),
        "OP": op,
        "OR": o_r,
        "OF1": 2 * op * o_r / (op + o_r),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    metric = FieldMetrics(6)
    for rows in (slice(0, 25), slice(25, 60)):
        metric.update(probs[rows], preds[rows], target[rows])
    for name, value in metric.compute().items():
        assert float(value) == pytest.approx(got[name], abs=1e-6), name


def test_map_of_labels_without_positives_is_silent() -> None:
    """COMP5329's label 12 never occurs: every validation epoch would print torchmetrics' warning about it,
    although mAP leaves such labels out."""
    target = torch.zeros(8, 4, dtype=torch.int)
    target[:4, 0], target[2:, 1] = 1, 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert 0.0 <= float(mean_average_precision(torch.rand(8, 4), target)) <= 1.0
