import numpy as np

from lmforge.core.metrics import classification_metrics


def test_metrics_against_a_hand_count():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    m = classification_metrics(y_true, y_pred, 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["accuracy"] == 3 / 5
    # F1 per class: 0 -> 2*1/(2+2)=0.5; 1 -> 2*2/(3+2)=0.8; 2 -> 0
    assert abs(m["macro_f1"] - (0.5 + 0.8 + 0.0) / 3) < 1e-12
