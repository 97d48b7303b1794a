"""Descriptor probe: recovers attributes that are in the descriptors, stays at chance when they are not."""

import numpy as np
import pytest

from kp_perception_training.evaluation.descriptor_probe import (
    kmeans_attribute_accuracy,
    kmeans_centres,
    nearest_centroid_accuracy,
)


def _clustered(n_per=40, classes=6, dim=16, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), n_per)
    rng.shuffle(labels)
    x = centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True) + spread * rng.normal(size=(len(labels), dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_clustered_attributes_are_found_by_both_probes():
    x, labels = _clustered()
    assert nearest_centroid_accuracy(x, labels) > 0.97
    assert kmeans_attribute_accuracy(x, {"a": labels}, k=12)["a"] > 0.9


def test_unrelated_labels_stay_near_chance():
    x, _ = _clustered(seed=1)
    labels = np.random.default_rng(2).integers(0, 6, len(x))
    assert nearest_centroid_accuracy(x, labels) < 0.35  # chance 1/6
    assert kmeans_attribute_accuracy(x, {"a": labels}, k=12)["a"] < 0.35


def test_kmeans_centres_are_unit_and_at_most_n():
    x, _ = _clustered(n_per=2, classes=3)
    centres = kmeans_centres(x, k=10)
    assert centres.shape == (6, x.shape[1])
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-9)


def test_identical_descriptors_score_the_majority_guess_instead_of_failing():
    """An untrained encoder can give every object the same descriptor; the probe must still report."""
    labels = ["L", "L", "L", "I", "I", "L", "T", "L"]  # fit half (even rows) L L I T, test half L I L L
    acc = nearest_centroid_accuracy(np.ones((len(labels), 4), np.float32), labels)
    fit_half, test_half = labels[0::2], labels[1::2]
    majority = max(set(fit_half), key=fit_half.count)
    assert acc == pytest.approx(test_half.count(majority) / len(test_half))
