"""k-fold cross-validation splits for multi-label rows (`data.folds=K data.fold=i`).

Iterative stratification (Sechidis et al. 2011, through the `iterative-stratification` package's
MultilabelStratifiedKFold) keeps every label's share of rows close to equal across the K validation folds, which a
plain shuffle does not for rare labels. Seeded by `data.split_seed` only, so every run of a study with the same
data and seed sees the same folds; the K validation folds together cover every row exactly once.

Torch-free on purpose: the data side and the settings check import it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["check_fold", "fold_indices", "multi_hot_matrix"]


def check_fold(folds: int | None, fold: int | None) -> None:
    """`data.folds` is null (one train/val split) or >= 2, and `data.fold` then one of 0..folds-1."""
    if folds is None:
        return
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(
            f"data.folds={folds!r} is not allowed: it must be null (one split) or an integer >= 2"
        )
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ValueError(
            f"data.fold={fold!r} is not allowed with data.folds={folds}: it must be one of 0..{folds - 1}"
        )


def multi_hot_matrix(label_lists: Sequence[Sequence[int]], label_ids: Sequence[int]) -> np.ndarray:
    """[rows, labels] 0/1 matrix of the rows' label lists (labels outside `label_ids` are ignored)."""
    column = {label: i for i, label in enumerate(label_ids)}
    matrix = np.zeros((len(label_lists), len(label_ids)), dtype=np.int8)
    for row, labels in enumerate(label_lists):
        for label in labels:
            if label in column:
                matrix[row, column[label]] = 1
    return matrix


def fold_indices(
    label_lists: Sequence[Sequence[int]], label_ids: Sequence[int], folds: int, fold: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of fold `fold` of `folds`, both sorted; the same for the same labels and seed."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    check_fold(folds, fold)
    rows = len(label_lists)
    if rows < folds:
        raise ValueError(
            f"data.folds={folds} needs at least {folds} labelled rows, the training CSV has {rows}"
        )
    targets = multi_hot_matrix(label_lists, label_ids)
    splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for i, (train_idx, val_idx) in enumerate(splitter.split(np.zeros((rows, 1)), targets)):
        if i == fold:
            return np.sort(train_idx), np.sort(val_idx)
    raise AssertionError("unreachable: check_fold bounds fold")
