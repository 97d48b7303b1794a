"""Purity of prototype assignments against object identities.

Purity = (1/N) Σ_prototype max_identity |prototype ∩ identity|: the fraction
of detections whose prototype's majority identity is their own identity. It
answers "does each prototype stand for one kind of object?"; it is 1.0 when
every prototype only ever fires on one identity (several prototypes may share
an identity, which purity does not punish: report the count of prototypes used
beside it).
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def purity(prototype_ids: np.ndarray, identities: np.ndarray) -> float:
    """Purity of N prototype ids against N identity labels (any hashable labels); NaN when N = 0."""
    protos = np.asarray(prototype_ids).reshape(-1)
    ids = np.asarray(identities).reshape(-1)
    if protos.shape != ids.shape:
        raise ValueError(f"{protos.size} prototype ids but {ids.size} identities")
    if protos.size == 0:
        return float("nan")
    counts: dict = {}
    for p, i in zip(protos.tolist(), ids.tolist(), strict=True):
        counts.setdefault(p, Counter())[i] += 1
    return sum(c.most_common(1)[0][1] for c in counts.values()) / protos.size


def inverse_purity(prototype_ids: np.ndarray, identities: np.ndarray) -> float:
    """Purity with the roles swapped: does each identity go to one prototype? (splitting is punished)."""
    return purity(identities, prototype_ids)


def purity_by_identity(prototype_ids: np.ndarray, identities: np.ndarray) -> dict:
    """Per identity: the share of its detections on prototypes whose majority identity is it.

    Purity's per-kind breakdown (e.g. by object type): a kind that shares its
    prototypes with a more frequent kind scores near 0 here even when the
    overall purity is high. Ties of the majority go to the first identity seen.
    """
    protos = np.asarray(prototype_ids).reshape(-1).tolist()
    ids = np.asarray(identities).reshape(-1).tolist()
    if len(protos) != len(ids):
        raise ValueError(f"{len(protos)} prototype ids but {len(ids)} identities")
    counts: dict = {}
    for p, i in zip(protos, ids, strict=True):
        counts.setdefault(p, Counter())[i] += 1
    majority = {p: c.most_common(1)[0][0] for p, c in counts.items()}
    total, right = Counter(ids), Counter(i for p, i in zip(protos, ids, strict=True) if majority[p] == i)
    return {i: right[i] / total[i] for i in sorted(total)}
