"""What the descriptors know, apart from what the learned prototypes make of it.

Shape and colour accuracy (``attributes.py``) score the encoder and the
prototypes together. When they are low it matters which of the two failed, so
the TUSK evaluation also reports, on the matched objects' descriptors, split in
two fixed halves (even/odd object index):

- a nearest-centroid probe (scikit-learn's ``NearestCentroid``): class
  centroids fitted on one half, the other half classified by nearest centroid
  (is the attribute linearly there at all?);
- k-means prototypes: M centres from scikit-learn's ``KMeans`` (k-means++,
  seeded) fitted on one half in place of the learned prototypes and scaled to
  unit length, as prototypes are; each labelled by majority vote on that half and
  scored on the other (what prototypes *could* achieve on these descriptors).

Descriptors are unit vectors compared by squared distance, as the prototypes are.
(Euclidean k-means on unit vectors, centres normalised afterwards, stands in for
spherical k-means: for points on the sphere the two assign almost alike, and the
figure is a probe, not the model.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestCentroid


def _halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(n)
    return idx[idx % 2 == 0], idx[idx % 2 == 1]


def nearest_centre(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest of K×C ``centres`` for each of N×C rows (no N×K×C temporary)."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ centres.T + (centres * centres).sum(1)[None]
    return d.argmin(1)


def nearest_centroid_accuracy(descriptors: np.ndarray, labels: Sequence) -> float:
    """Held-out accuracy of a nearest-centroid classifier of N×C descriptors (NaN if either half is empty)."""
    labels = np.asarray(labels)
    fit, test = _halves(len(labels))
    if len(fit) == 0 or len(test) == 0:
        return float("nan")
    if len(set(labels[fit].tolist())) < 2:  # one class: every prediction is that class
        return float((labels[test] == labels[fit][0]).mean())
    if not np.ptp(descriptors[fit], axis=0).any():
        # Identical descriptors (e.g. an untrained encoder): every centroid is the same point, so the
        # probe can only guess the most frequent class (scikit-learn refuses to fit this).
        return float((labels[test] == Counter(labels[fit].tolist()).most_common(1)[0][0]).mean())
    probe = NearestCentroid().fit(descriptors[fit], labels[fit])
    return float((probe.predict(descriptors[test]) == labels[test]).mean())


def kmeans_centres(
    x: np.ndarray, k: int, seed: int = 0, n_init: int = 1, init: np.ndarray | None = None
) -> np.ndarray:
    """At most k unit-length k-means centres of N×C unit vectors (scikit-learn KMeans, seeded).

    Started from k-means++, or from the k×C ``init`` (then one run: it is a start, not a sample).
    """
    if init is not None:
        km = KMeans(n_clusters=len(init), init=init, n_init=1, random_state=seed)
    else:
        k = min(k, len(np.unique(x, axis=0)))
        km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed)
    centres = km.fit(x).cluster_centers_
    return centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)


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
    centres = kmeans_centres(descriptors[fit], k, seed=seed)
    fit_ids, test_ids = nearest_centre(descriptors[fit], centres), nearest_centre(descriptors[test], centres)
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
