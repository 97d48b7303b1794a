"""The nodes' lifecycle and QoS overrides, driven from another process through the real ROS 2 graph.

The node runs as its own process (started as the launch file starts it, with
``autostart:=false`` where the test drives the transitions). The test
process is a second rclpy participant that calls the node's real lifecycle
services (lifecycle_msgs ChangeState / GetState), publishes frames, listens
to the outputs and reads the graph (``get_subscriptions_info_by_topic``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

import yaml  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from kp_perception_msgs.msg import KeypointPyramid, PolicyObservation  # noqa: E402
from test.test_nodes import REPO, NodeProcess, Peer, check_pyramid, publish_until, raw_msg, wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from test.model_fixtures import make_model

    return {"pyramids": make_model("pyramids", tmp_path_factory.mktemp("lifecycle_models"), 64)}


@pytest.fixture(scope="module")
def peer():
    p = Peer()
    yield p
    p.close()


class Lifecycle:
    """A client of one node's lifecycle services, as `ros2 lifecycle` or a lifecycle manager uses them."""

    def __init__(self, peer: Peer, node: NodeProcess, name: str = "pyramids_node") -> None:
        self.node = node
        self.change = peer.node.create_client(ChangeState, f"{node.ns}/{name}/change_state")
        self.get = peer.node.create_client(GetState, f"{node.ns}/{name}/get_state")
        wait_for(lambda: self.change.service_is_ready() and self.get.service_is_ready(), 30,
                 "the lifecycle services", node)

    def _call(self, client, request, timeout: float = 60.0, attempts: int = 1):
        """Call and wait for the reply; an idempotent request may be sent ``attempts`` times, because on a
        loaded CPU Fast DDS can drop a service reply ("failed to send response (timeout)")."""
        for _ in range(attempts - 1):
            future = client.call_async(request)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not future.done():
                time.sleep(0.02)
            if future.done():
                return future.result()
            client.remove_pending_request(future)
        future = client.call_async(request)
        wait_for(future.done, timeout, f"a reply from {client.srv_name}", self.node)
        return future.result()

    def state(self) -> str:
        return self._call(self.get, GetState.Request(), timeout=20.0, attempts=3).current_state.label

    def transition(self, transition_id: int, attempts: int = 1) -> bool:
        """``attempts`` > 1 only where a repeat cannot change the outcome (e.g. a configure that must fail)."""
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self._call(self.change, request, timeout=60.0 / attempts, attempts=attempts).success


def send_frames(peer: Peer, pub, seconds: float) -> None:
    """Publish fresh frames at 20 Hz for ``seconds`` (no output expected or awaited)."""
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        pub.publish(raw_msg(i, _header(peer)))
        i += 1
        time.sleep(0.05)


def _header(peer: Peer):
    from std_msgs.msg import Header

    return Header(frame_id="camera_optical", stamp=peer.node.get_clock().now().to_msg())


def _set(peer: Peer, node: NodeProcess, **values) -> list:
    client = AsyncParameterClient(peer.node, f"{node.ns}/pyramids_node")
    assert client.wait_for_services(timeout_sec=10.0)
    future = client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
    wait_for(future.done, 10, "set_parameters reply", node)
    return future.result().results


def test_lifecycle_services_configure_activate_deactivate_cleanup_and_frames_flow_only_when_active(peer, models):
    node = NodeProcess("pyramids", models["pyramids"], "lc_pyr", extra={"autostart": "false"})
    try:
        pyramids = peer.collect(KeypointPyramid, f"{node.ns}/keypoints")
        observations = peer.collect(PolicyObservation, f"{node.ns}/keypoints_observation")
        pub = peer.node.create_publisher(Image, node.image_topic, qos_profile_sensor_data)
        lc = Lifecycle(peer, node)
        assert lc.state() == "unconfigured"
        assert peer.node.count_subscribers(node.image_topic) == 0 and "configured:" not in node.stderr()

        assert lc.transition(Transition.TRANSITION_CONFIGURE) and lc.state() == "inactive"
        # Loaded and warmed up at configure (the log line may reach us just after the service reply).
        wait_for(lambda: "configured: model" in node.stderr() and "warm-up" in node.stderr(), 10,
                 "the configured line", node)
        assert peer.node.count_publishers(f"{node.ns}/keypoints") == 1  # lifecycle publisher exists, disabled
        send_frames(peer, pub, 1.0)
        assert peer.node.count_subscribers(node.image_topic) == 0 and not pyramids  # inactive: nothing flows

        assert lc.transition(Transition.TRANSITION_ACTIVATE) and lc.state() == "active"
        wait_for(lambda: pub.get_subscription_count() > 0, 30, "the image subscription after activate", node)
        publish_until(peer, pub, raw_msg, lambda: len(pyramids) >= 3, node)
        for msg in list(pyramids):
            check_pyramid(msg)

        assert lc.transition(Transition.TRANSITION_DEACTIVATE) and lc.state() == "inactive"
        wait_for(lambda: pub.get_subscription_count() == 0, 30, "the image subscription to go", node)
        time.sleep(0.3)  # outputs already in flight
        n_inactive = len(pyramids)
        send_frames(peer, pub, 1.0)
        assert len(pyramids) == n_inactive  # deactivated: frames in, nothing out
        # Configure-time parameters are refused unless unconfigured, with the reason.
        (refused,) = _set(peer, node, publish_observation=True)
        assert not refused.successful and "unconfigured" in refused.reason

        assert lc.transition(Transition.TRANSITION_CLEANUP) and lc.state() == "unconfigured"
        wait_for(lambda: peer.node.count_publishers(f"{node.ns}/keypoints") == 0, 30,
                 "the publisher to be released at cleanup", node)
        (accepted,) = _set(peer, node, publish_observation=True)
        assert accepted.successful
        # Configured again, with the new value: the observation now flows too.
        assert lc.transition(Transition.TRANSITION_CONFIGURE) and lc.transition(Transition.TRANSITION_ACTIVATE)
        wait_for(lambda: pub.get_subscription_count() > 0, 30, "the image subscription after re-activation", node)
        publish_until(peer, pub, raw_msg, lambda: len(pyramids) >= n_inactive + 2 and observations, node)
        assert node.proc.poll() is None
    finally:
        assert node.stop() == 0, node.stderr()


def test_a_failed_configure_is_one_error_line_and_the_node_stays_unconfigured_and_can_retry(peer, models, tmp_path):
    missing = tmp_path / "nope.onnx"
    node = NodeProcess("pyramids", missing, "lc_fail", extra={"autostart": "false"})
    try:
        lc = Lifecycle(peer, node)
        # A failed configure leaves the node unconfigured, so a repeat (after a reply Fast DDS dropped) fails alike.
        assert not lc.transition(Transition.TRANSITION_CONFIGURE, attempts=2)
        assert lc.state() == "unconfigured" and node.proc.poll() is None  # a managed node is not killed
        wait_for(lambda: any("[ERROR]" in ln for ln in node.lines), 10, "the configure error line", node)
        errors = [ln for ln in node.lines if "[ERROR]" in ln]
        # One line per configure (two if the reply was dropped and the configure repeated), no traceback.
        assert 1 <= len(errors) <= 2, node.stderr()
        assert all(f"model file {missing} does not exist" in e for e in errors), node.stderr()
        assert "Traceback" not in node.stderr()
        (ok,) = _set(peer, node, model_file_path=str(models["pyramids"]))
        assert ok.successful
        assert lc.transition(Transition.TRANSITION_CONFIGURE) and lc.state() == "inactive"
    finally:
        assert node.stop() == 0, node.stderr()


def _params_with_qos_overrides(tmp_path: Path, overrides: dict) -> str:
    params = yaml.safe_load((REPO / "config" / "pyramids.yaml").read_text())
    params["/**"]["ros__parameters"]["qos_overrides"] = overrides
    path = tmp_path / "pyramids_qos.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def test_qos_overrides_from_a_params_file_change_the_subscription_and_publisher_seen_in_the_graph(
        peer, models, tmp_path):
    ns = "lc_qos"
    params = _params_with_qos_overrides(tmp_path, {
        f"/{ns}/camera/image_raw": {"subscription": {"reliability": "reliable", "depth": 4}},
        f"/{ns}/keypoints": {"publisher": {"reliability": "best_effort"}},
        f"/{ns}/no_such_topic": {"subscription": {"reliability": "reliable"}},
    })
    node = NodeProcess("pyramids", models["pyramids"], ns, params_file=params)
    try:
        keypoints = f"{node.ns}/keypoints"
        wait_for(lambda: peer.node.get_subscriptions_info_by_topic(node.image_topic)
                 and peer.node.get_publishers_info_by_topic(keypoints), 30, "the node's endpoints", node)
        (sub,) = peer.node.get_subscriptions_info_by_topic(node.image_topic)
        (out,) = peer.node.get_publishers_info_by_topic(keypoints)
        # The parameter file asked image_reliability: best_effort and the code publishes reliable; both overridden.
        assert sub.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        # History depth is not sent over discovery (the graph says 0): the node's own log line states it.
        # (The subscription is in the graph a moment before that line is written.)
        wait_for(lambda: f"input {node.image_topic} (reliable, depth 4)" in node.stderr(), 10,
                 "the active line with the overridden image QoS", node)
        assert out.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        # An override naming no topic of the node is a warning, not silence.
        wait_for(lambda: "qos_overrides./lc_qos/no_such_topic.subscription.reliability" in node.stderr(), 10,
                 "the unmatched-override warning", node)
        assert "does nothing" in node.stderr()
        # And it really is reliable: a reliable publisher's frames come through (depth 4 queue).
        pyramids = peer.collect(KeypointPyramid, keypoints, qos_profile_sensor_data)
        pub = peer.node.create_publisher(Image, node.image_topic, QoSProfile(depth=4, reliability=ReliabilityPolicy.RELIABLE))
        wait_for(lambda: pub.get_subscription_count() > 0, 30, "the reliable match", node)
        publish_until(peer, pub, raw_msg, lambda: len(pyramids) >= 2, node)
    finally:
        assert node.stop() == 0, node.stderr()


def test_a_bad_qos_override_value_is_one_clear_line_and_a_nonzero_exit(models, tmp_path):
    params = _params_with_qos_overrides(
        tmp_path, {"/lc_badqos/camera/image_raw": {"subscription": {"reliability": "sometimes"}}})
    node = NodeProcess("pyramids", models["pyramids"], "lc_badqos", params_file=params)
    node.proc.wait(timeout=60)
    node._reader.join(timeout=5)
    assert node.proc.returncode != 0
    lines = [ln for ln in node.lines if ln.strip() and "[INFO]" not in ln]
    assert len(lines) == 1 and "Traceback" not in node.stderr(), node.stderr()
    assert "sometimes" in lines[0] and "reliability" in lines[0]
