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


@pytest.mark.parametrize("name", ["kmeans", "whitened"])
def test_a_tracked_refit_keeps_the_partition_it_starts_from(name):
    """Started at the right centres, k-means stays on a partition that k-means++ would give up."""
    x, colour = _shapes_and_weak_colours(0)
    groups = colour + 3 * np.repeat(np.arange(4), 3 * 80)  # (shape, colour) of each row
    truth = np.stack([x[groups == g].mean(0) for g in range(12)])
    from_scratch = _majority_accuracy(x, REFIT_METHODS["kmeans"](x, 12), colour)
    tracked = _majority_accuracy(x, REFIT_METHODS[name](x, 12, init=truth), colour)
    assert from_scratch < 0.6 and tracked == 1.0, (from_scratch, tracked)


def _method_with_bank(track: bool, bank_rows: int = 256):
    from kp_perception_training.tusk.method import TuskMethod

    config = {"model": {"num_keypoints": 2, "num_prototypes": 12, "width": 8, "descriptor_dim": 6},
              "data": {"image_size": 24},
              "prototypes": {"refit_bank": bank_rows, "refit_track": track}}
    return TuskMethod(build_config(TuskMethod.config_class, config))


def _fill(method, x: np.ndarray) -> None:
    import torch

    method._remember(torch.from_numpy(x).float())


def test_tracked_refit_centres_are_saved_and_resume_gives_the_same_next_fit():
    import torch

    x, _ = _shapes_and_weak_colours(0, n=40)
    rng = np.random.default_rng(0)
    moved = x + rng.normal(size=x.shape) * 0.01  # training moves the descriptors a little
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    method = _method_with_bank(track=True, bank_rows=len(x))
    _fill(method, x)
    first = method.refit_prototypes()
    state = method.state_dict()
    assert torch.equal(state["refit_centres"], first) and bool(state["refit_centres_set"])
    resumed = _method_with_bank(track=True, bank_rows=len(x))
    resumed.load_state_dict(state)
    _fill(method, moved)
    _fill(resumed, moved)
    second = method.refit_prototypes()
    assert torch.equal(resumed.refit_prototypes(), second)
    # Tracked: each centre moved a little, none jumped to another cluster.
    assert float((second - first).norm(dim=1).max()) < 0.1


def test_untracked_refit_keeps_no_centres_in_the_checkpoint():
    method = _method_with_bank(track=False)
    assert "refit_centres" not in method.state_dict() and "descriptor_bank" in method.state_dict()


def test_over_ward_cannot_be_tracked():
    with pytest.raises(ConfigError, match="refit_track"):
        build_config(TuskConfig, {"prototypes": {"refit_method": "over_ward", "refit_track": True}})
