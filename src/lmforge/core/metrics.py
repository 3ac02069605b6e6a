"""Classification metrics: accuracy, macro-F1, confusion matrix (rows: true label, columns: predicted)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    """Mean F1 over the labels present in the gold data or the predictions."""
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    present = (predicted + actual) > 0
    denominator = predicted + actual
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> dict:
    matrix = confusion_matrix(y_true, y_pred, n_labels)
    return {
        "accuracy": float(np.trace(matrix) / max(1, matrix.sum())),
        "macro_f1": macro_f1(matrix),
        "confusion": matrix.tolist(),
    }
