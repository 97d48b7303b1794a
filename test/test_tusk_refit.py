"""The refit clusterings of TUSK's saved prototypes (training/tusk/refit.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage

from kp_perception.errors import ConfigError
from kp_perception_training.config import build_config
from kp_perception_training.tusk.config import TuskConfig
from kp_perception_training.tusk.refit import REFIT_METHODS, ward_merge, whitened_refit


def _shapes_and_weak_colours(seed: int, shapes: int = 4, colours: int = 3, n: int = 80):
    """Unit descriptors: shapes far apart and wide in 3 strong dims, colours close but tight in weak dims."""
    rng = np.random.default_rng(seed)
    shape_centres = rng.normal(size=(shapes, 3)) * 3
    x, colour = [], []
    for s in range(shapes):
        for c in range(colours):
            strong = shape_centres[s] + rng.normal(size=(n, 3)) * 0.3
            weak = np.eye(colours)[c] * 0.3 + rng.normal(size=(n, colours)) * 0.01
            x.append(np.concatenate([strong, weak], axis=1))
            colour += [c] * n
    x = np.concatenate(x)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.array(colour)


def _majority_accuracy(x: np.ndarray, centres: np.ndarray, labels: np.ndarray) -> float:
    ids = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    named = {i: Counter(labels[ids == i].tolist()).most_common(1)[0][0] for i in set(ids.tolist())}
    return float(np.mean([named[i] == v for i, v in zip(ids.tolist(), labels.tolist(), strict=True)]))


@pytest.mark.parametrize("seed", [0, 1])
def test_whitening_keeps_an_attribute_that_plain_kmeans_merges(seed):
    """One centre per (shape, colour): plain k-means spends them on the wide shapes, whitened k-means does not."""
    x, colour = _shapes_and_weak_colours(seed)
    plain = _majority_accuracy(x, REFIT_METHODS["kmeans"](x, 12), colour)
    whitened = _majority_accuracy(x, whitened_refit(x, 12), colour)
    assert plain < 0.6 and whitened > 0.95, (plain, whitened)


def test_ward_merge_of_single_points_is_scipys_ward_linkage():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(30, 4))
    ours = ward_merge(points, np.ones(len(points)), 7)
    theirs = fcluster(linkage(points, method="ward"), t=7, criterion="maxclust")
    assert len(set(ours.tolist())) == 7
    # The same partition, whatever the label numbers.
    assert len({(a, b) for a, b in zip(ours.tolist(), theirs.tolist(), strict=True)}) == 7


@pytest.mark.parametrize("name", sorted(REFIT_METHODS))
def test_every_refit_gives_m_distinct_unit_centres(name):
    x, _ = _shapes_and_weak_colours(0)
    centres = REFIT_METHODS[name](x, 12)
    assert centres.shape == (12, x.shape[1])
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-9)
    assert len(np.unique(centres.round(6), axis=0)) == 12


def test_an_unknown_refit_method_is_a_config_error():
    with pytest.raises(ConfigError, match="refit_method"):
        build_config(TuskConfig, {"prototypes": {"refit_method": "spectral"}})
