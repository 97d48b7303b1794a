"""What the descriptors know, apart from what the learned prototypes make of it.

Shape and colour accuracy (``attributes.py``) score the encoder and the
prototypes together. When they are low it matters which of the two failed, so
the TUSK evaluation also reports, on the matched objects' descriptors, split in
two fixed halves (even/odd object index):

- a nearest-centroid probe: class centroids fitted on one half, the other half
  classified by nearest centroid (is the attribute linearly there at all?);
- k-means prototypes: M spherical k-means centres (k-means++ start, Lloyd
  iterations, seeded) fitted on one half in place of the learned prototypes,
  labelled by majority vote on that half and scored on the other (what
  prototypes *could* achieve on these descriptors).

Descriptors are unit vectors compared by squared distance, as the prototypes are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def _halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(n)
    return idx[idx % 2 == 0], idx[idx % 2 == 1]


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)


def nearest_centroid_accuracy(descriptors: np.ndarray, labels: Sequence) -> float:
    """Held-out accuracy of a nearest-centroid classifier of N×C descriptors (NaN if either half is empty)."""
    labels = np.asarray(labels)
    fit, test = _halves(len(labels))
    if len(fit) == 0 or len(test) == 0:
        return float("nan")
    classes = sorted(set(labels[fit].tolist()))
    centres = np.stack([descriptors[fit][labels[fit] == c].mean(0) for c in classes])
    return float((np.asarray(classes)[_nearest(descriptors[test], centres)] == labels[test]).mean())


def spherical_kmeans(x: np.ndarray, k: int, iterations: int = 30, seed: int = 0) -> np.ndarray:
    """k unit-length centres of N×C unit vectors: k-means++ start, then Lloyd steps (empty clusters stay)."""
    rng = np.random.default_rng(seed)
    k = min(k, len(x))
    centres = [x[rng.integers(len(x))]]
    nearest = ((x - centres[0]) ** 2).sum(1)
    for _ in range(k - 1):
        pick = rng.choice(len(x), p=nearest / nearest.sum()) if nearest.sum() > 0 else rng.integers(len(x))
        centres.append(x[pick])
        nearest = np.minimum(nearest, ((x - x[pick]) ** 2).sum(1))
    c = np.stack(centres)
    for _ in range(iterations):
        assign = _nearest(x, c)
        for m in np.unique(assign):
            mean = x[assign == m].mean(0)
            c[m] = mean / max(np.linalg.norm(mean), 1e-12)
    return c


def kmeans_attribute_accuracy(
    descriptors: np.ndarray, labels: dict[str, Sequence], k: int, seed: int = 0
) -> dict[str, float]:
    """Held-out majority-vote accuracy, per attribute, of k k-means centres fitted once on the first half.

    ``labels``: attribute name -> N values. NaN where a half is empty.
    """
    n = len(descriptors)
    fit, test = _halves(n)
    if len(fit) == 0 or len(test) == 0:
        return {name: float("nan") for name in labels}
    centres = spherical_kmeans(descriptors[fit], k, seed=seed)
    fit_ids, test_ids = _nearest(descriptors[fit], centres), _nearest(descriptors[test], centres)
    out = {}
    for name, values in labels.items():
        values = np.asarray(values)
        votes: dict[int, Counter] = {}
        for m, v in zip(fit_ids, values[fit], strict=True):
            votes.setdefault(int(m), Counter())[v] += 1
        named = {m: c.most_common(1)[0][0] for m, c in votes.items()}
        out[name] = float(np.mean([named.get(int(m)) == v for m, v in zip(test_ids, values[test], strict=True)]))
    return out


def shape_colour_probe(descriptors: np.ndarray, shapes: Sequence, colours: Sequence, k: int) -> dict[str, float]:
    """The TUSK eval's ``descriptor_probe``: global and within-colour shape probes, colour probe, k-means centres.

    ``shape_given_colour``: the shape probe inside each colour, weighted by its test
    count; colour dominates squared distances, so a global probe can miss shape that is there.
    """
    shapes_a, colours_a = np.asarray(shapes), np.asarray(colours)
    within, count = 0.0, 0
    for c in sorted(set(colours_a.tolist())):
        sel = colours_a == c
        acc = nearest_centroid_accuracy(descriptors[sel], shapes_a[sel])
        if not np.isnan(acc):
            n_test = int(sel.sum()) // 2
            within, count = within + acc * n_test, count + n_test
    kmeans = kmeans_attribute_accuracy(descriptors, {"shape": shapes_a, "colour": colours_a}, k)
    return {
        "shape": nearest_centroid_accuracy(descriptors, shapes_a),
        "colour": nearest_centroid_accuracy(descriptors, colours_a),
        "shape_given_colour": within / count if count else float("nan"),
        "kmeans_prototypes_shape": kmeans["shape"],
        "kmeans_prototypes_colour": kmeans["colour"],
    }
