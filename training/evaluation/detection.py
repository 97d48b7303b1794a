"""MNIST-hard detection (a 20×20 box at IoU >= 0.5) and classification (Hungarian prototype -> digit).

Detection: each kept keypoint (score >= threshold) is a 20×20 box centred on
it; each ground-truth digit a 20×20 box centred on its centre. Boxes are
matched one-to-one by the Hungarian method on 1 - IoU and a pair counts when
IoU >= 0.5. Localisation accuracy = matched digits / digits; precision =
matched / kept detections.

Classification: the M×10 table of (prototype, digit) over matched pairs is
solved for the one-to-one assignment with the most agreements
(``linear_sum_assignment``); accuracy = digits whose matched keypoint's
prototype maps to their own class / all digits (unmatched digits are wrong).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def box_iou_centred(a_xy: np.ndarray, b_xy: np.ndarray, size: float = 20.0) -> np.ndarray:
    """IoU of equal-size square boxes centred at A×2 and B×2 pixel points -> A×B."""
    a = np.asarray(a_xy, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b_xy, dtype=np.float64).reshape(-1, 2)
    d = np.abs(a[:, None, :] - b[None, :, :])
    overlap = np.clip(size - d, 0.0, None).prod(-1)
    return overlap / (2.0 * size * size - overlap)


def match_detections(
    pred_xy: np.ndarray, true_xy: np.ndarray, box: float = 20.0, iou_threshold: float = 0.5
) -> list[tuple[int, int]]:
    """One-to-one (pred, true) pairs with IoU >= threshold (Hungarian on 1 - IoU)."""
    if len(pred_xy) == 0 or len(true_xy) == 0:
        return []
    iou = box_iou_centred(pred_xy, true_xy, box)
    rows, cols = linear_sum_assignment(1.0 - iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= iou_threshold]


def detection_metrics(
    images: list[dict], score_threshold: float = 0.5, box: float = 20.0, iou_threshold: float = 0.5
) -> dict:
    """Localisation/precision/classification over images.

    Each item: {"xy": K×2 px, "scores": K, "prototypes": K, "true_xy": G×2 px, "labels": G}.
    Detections below ``score_threshold`` are dropped before matching.
    """
    digits = kept = matched = 0
    pairs: list[tuple[int, int]] = []  # (prototype, label) of matched digits
    for item in images:
        keep = np.asarray(item["scores"]) >= score_threshold
        xy = np.asarray(item["xy"]).reshape(-1, 2)[keep]
        protos = np.asarray(item["prototypes"]).reshape(-1)[keep]
        labels = np.asarray(item["labels"]).reshape(-1)
        m = match_detections(xy, item["true_xy"], box, iou_threshold)
        digits += len(labels)
        kept += int(keep.sum())
        matched += len(m)
        pairs += [(int(protos[p]), int(labels[t])) for p, t in m]
    classification = float("nan")
    if digits:
        if pairs:
            p_ids = sorted({p for p, _ in pairs})
            l_ids = sorted({label for _, label in pairs})
            table = np.zeros((len(p_ids), len(l_ids)), dtype=np.int64)
            for p, label in pairs:
                table[p_ids.index(p), l_ids.index(label)] += 1
            rows, cols = linear_sum_assignment(-table)
            classification = float(table[rows, cols].sum() / digits)
        else:
            classification = 0.0
    return {
        "localisation": matched / digits if digits else float("nan"),
        "precision": matched / kept if kept else float("nan"),
        "classification": classification,
        "digits": digits,
        "detections_kept": kept,
    }
