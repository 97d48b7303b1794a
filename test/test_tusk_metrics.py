"""TUSK evaluation metrics: ARI against sklearn, purity, attribute accuracy, detection/classification."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from kp_perception_training.evaluation.ari import foreground_ari
from kp_perception_training.evaluation.attributes import attribute_accuracy, match_points
from kp_perception_training.evaluation.detection import box_iou_centred, detection_metrics
from kp_perception_training.evaluation.purity import inverse_purity, purity

HAND_CASES = [
    ([0, 0, 1, 1], [0, 0, 1, 1]),
    ([0, 0, 1, 1], [1, 1, 0, 0]),
    ([0, 0, 1, 2], [0, 0, 1, 1]),
    ([0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2]),
    ([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1]),
    ([0, 0, 0, 0], [0, 1, 2, 3]),
    ([0, 0, 0, 0], [0, 0, 0, 0]),
    ([0, 1, 2, 3], [0, 1, 2, 3]),
    ([5, 5, 7, 7, 9], [1, 1, 1, 2, 2]),
]


@pytest.mark.parametrize(("a", "b"), HAND_CASES)
def test_foreground_ari_on_all_foreground_masks_is_sklearns_ari(a, b):
    assert foreground_ari(np.array(a) + 1, np.array(b)) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_foreground_ari_ignores_background_pixels():
    true = np.array([[0, 0, 1, 1], [0, 0, 2, 2]])
    # Background predicted as anything at all does not matter; foreground split perfectly.
    pred = np.array([[3, 4, 7, 7], [5, 6, 8, 8]])
    assert foreground_ari(true, pred) == 1.0
    merged = np.array([[0, 0, 7, 7], [0, 0, 7, 7]])
    assert foreground_ari(true, merged) == pytest.approx(adjusted_rand_score([1, 1, 2, 2], [7, 7, 7, 7]))
    assert np.isnan(foreground_ari(np.zeros((2, 2), int), np.ones((2, 2), int)))


def test_purity_is_one_for_pure_prototypes_and_drops_for_mixed():
    assert purity([0, 0, 1, 1, 2], ["a", "a", "b", "b", "b"]) == 1.0
    assert purity([0, 0, 0, 0], ["a", "a", "b", "b"]) == 0.5
    assert inverse_purity([0, 1, 2, 3], ["a", "a", "b", "b"]) == 0.5


def test_attribute_accuracy_uses_each_prototypes_majority_value():
    ids = [0, 0, 0, 1, 1, None]
    shapes = ["T", "T", "L", "L", "L", "L"]
    # prototype 0 -> T (2/3 right), prototype 1 -> L (2/2), unmatched object wrong: 4/6.
    assert attribute_accuracy(ids, shapes) == pytest.approx(4 / 6)


def test_match_points_is_one_to_one_and_respects_range():
    pairs = match_points([[0, 0], [10, 10], [50, 50]], [[11, 9], [1, 0]], max_distance=5)
    assert sorted(pairs) == [(0, 1), (1, 0)]


def test_box_iou_of_20px_boxes():
    assert box_iou_centred([[0, 0]], [[0, 0]])[0, 0] == pytest.approx(1.0)
    # Shifted by 5 px in x: overlap 15×20 = 300, union 500.
    assert box_iou_centred([[0, 0]], [[5, 0]])[0, 0] == pytest.approx(300 / 500)
    assert box_iou_centred([[0, 0]], [[20, 0]])[0, 0] == 0.0


def test_detection_drops_low_scores_and_handles_varying_counts():
    images = [
        {  # two digits; a third slot is empty (low score) near nothing
            "xy": [[10, 10], [40, 40], [70, 10]], "scores": [0.9, 0.8, 0.1], "prototypes": [3, 5, 3],
            "true_xy": [[11, 10], [41, 42]], "labels": [7, 2],
        },
        {  # one digit, three slots: only one above threshold
            "xy": [[20, 20], [60, 60], [5, 70]], "scores": [0.95, 0.2, 0.3], "prototypes": [3, 5, 5],
            "true_xy": [[22, 19]], "labels": [7],
        },
        {  # no digit at all: every slot empty
            "xy": [[20, 20], [60, 60], [5, 70]], "scores": [0.1, 0.2, 0.05], "prototypes": [1, 1, 1],
            "true_xy": np.zeros((0, 2)), "labels": np.zeros(0, int),
        },
    ]
    m = detection_metrics(images, score_threshold=0.5)
    assert m["digits"] == 3 and m["detections_kept"] == 3
    assert m["localisation"] == 1.0 and m["precision"] == 1.0
    assert m["classification"] == 1.0  # prototype 3 -> 7, prototype 5 -> 2
    # Without the threshold the empty slots become false positives.
    assert detection_metrics(images, score_threshold=0.0)["precision"] == pytest.approx(3 / 9)


def test_classification_uses_one_to_one_matching():
    # Prototype 0 fires on both digit classes: only one class can be matched to it.
    images = [{"xy": [[10, 10], [50, 50]], "scores": [1, 1], "prototypes": [0, 0],
               "true_xy": [[10, 10], [50, 50]], "labels": [1, 2]}]
    assert detection_metrics(images)["classification"] == 0.5
