"""Messages decode back into the result types they were made from (what the demo and replays rely on)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("kp_perception_msgs.msg", reason="kp_perception_msgs is not built (run `make setup`)")

from std_msgs.msg import Header  # noqa: E402

from kp_perception.results import KeypointPyramidResult, PrototypeDetectionResult  # noqa: E402
from kp_perception.ros_conversion import (  # noqa: E402
    detections_from_msg,
    detections_to_msg,
    pyramid_from_msg,
    pyramid_to_msg,
)


def test_pyramid_survives_message_and_back():
    rng = np.random.default_rng(0)
    result = KeypointPyramidResult(
        xy=rng.uniform(0, 63, (6, 2)).astype(np.float32), scores=rng.uniform(0, 1, 6).astype(np.float32),
        levels=np.array([0, 0, 1, 1, 1, 1], np.int32), parents=np.array([-1, -1, 0, 0, 1, 1], np.int32),
        level_sizes=(2, 4), image_width=64, image_height=48,
    )
    back = pyramid_from_msg(pyramid_to_msg(result, Header()))
    for name in ("xy", "scores", "levels", "parents"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert (back.level_sizes, back.image_width, back.image_height) == ((2, 4), 64, 48)


@pytest.mark.parametrize("count", [0, 3])
def test_detections_survive_message_and_back(count):
    rng = np.random.default_rng(1)
    result = PrototypeDetectionResult(
        xy=rng.uniform(0, 63, (count, 2)).astype(np.float32), scores=rng.uniform(0, 1, count).astype(np.float32),
        prototypes=rng.integers(0, 5, count).astype(np.int32), distances=rng.uniform(0, 2, count).astype(np.float32),
        descriptors=rng.normal(size=(count, 8)).astype(np.float32), num_prototypes=5, image_width=64,
        image_height=48,
    )
    back = detections_from_msg(detections_to_msg(result, Header()))
    for name in ("xy", "scores", "prototypes", "distances"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert back.descriptors.shape == (count, 8 if count else 0)
    if count:
        np.testing.assert_array_equal(back.descriptors, result.descriptors)
    assert back.num_prototypes == 5
