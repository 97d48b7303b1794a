"""``kp-perception demo tusk``: the summary says how the prototypes name the clip's object types."""

import numpy as np

from kp_perception.cli.demo_summary import prototype_types
from kp_perception.drawing import draw_detections
from kp_perception.results import PrototypeDetectionResult
from kp_perception_training.sim.annotations import Annotation, write_annotations
from kp_perception_training.sim.catalogue import CATALOGUE


def _result(xy, protos) -> PrototypeDetectionResult:
    k = len(xy)
    return PrototypeDetectionResult(
        xy=np.asarray(xy, np.float32), scores=np.ones(k, np.float32), prototypes=np.asarray(protos, np.int32),
        distances=np.zeros(k, np.float32), descriptors=np.zeros((k, 4), np.float32), num_prototypes=4,
        image_width=64, image_height=64,
    )


def test_prototype_types_report_fired_purity_recall_and_type_colours(tmp_path):
    rows = []
    for f in range(2):
        rows += [Annotation("episode_000", f, "mug/centre", 10, 10), Annotation("episode_000", f, "duck/centre", 40, 40),
                 Annotation("episode_000", f, "arm/link1", 30, 5)]
    csv = tmp_path / "annotations.csv"
    write_annotations(csv, rows)
    results = {0: _result([[10, 11], [41, 40], [30, 5]], [0, 1, 2]),  # prototype 2 fires on the arm only
               1: _result([[11, 10]], [1])}  # prototype 1 on the mug once: duck missed in frame 1
    got = prototype_types(csv, results, size=64)
    assert got["fired"] == 3 and got["matched_to_objects"] == 2
    assert got["purity"] == round(2 / 3, 3) and got["detection_recall"] == 0.75
    assert got["type_of_prototype"]["0"] == "mug"
    mug = tuple(int(round(255 * c)) for c in CATALOGUE["mug"].rgba[:3])
    assert got["colours"][0] == mug
    canvas = draw_detections(np.zeros((64, 64, 3), np.uint8), results[0], got["colours"], got["labels"])
    ring = canvas[10, 10 - 3 : 10 + 4]
    assert any(tuple(int(v) for v in px) == mug for px in ring)
