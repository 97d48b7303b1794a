"""TUSK encoder: keypoint head geometry, contract outputs, non-square inputs, ONNX export."""

import numpy as np
import pytest
import torch

from kp_perception.models import build_encoder
from kp_perception.models.tusk_encoder import (
    TuskEncoder,
    detect_keypoints,
    prototype_distances,
)


def blob_map(h, w, centres, sigma=1.5, peak=1.0):
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    m = torch.zeros(h, w)
    for cx, cy in centres:
        m = torch.maximum(m, peak * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)))
    return m[None, None]


def to_pixels(kp, w, h):
    return (kp + 1) / 2 * torch.tensor([w - 1, h - 1])


def test_detect_keypoints_finds_subpixel_peaks_on_a_non_square_map():
    h, w = 24, 40
    centres = [(6.3, 5.6), (33.5, 18.2)]
    kp = detect_keypoints(blob_map(h, w, centres), num_keypoints=2, window=7)
    found = sorted(to_pixels(kp[0], w, h).tolist())
    for (fx, fy), (cx, cy) in zip(found, sorted(centres), strict=True):
        assert abs(fx - cx) < 0.15 and abs(fy - cy) < 0.15


def test_nms_window_keeps_one_keypoint_per_blob():
    heat = blob_map(32, 32, [(8, 8), (24, 20)], sigma=2.0)
    kp = detect_keypoints(heat, num_keypoints=2, window=9)
    px = to_pixels(kp[0], 32, 32)
    assert torch.dist(px[0], px[1]) > 10  # not two maxima of the same blob


def test_scores_separate_objects_from_empty_slots():
    """K = 4 slots, 2 objects: the two real detections score high, the empty slots low."""
    enc = TuskEncoder(num_keypoints=4, num_prototypes=3, nms_window=7, width=8, descriptor_dim=8)
    heat = blob_map(32, 48, [(10, 10), (36, 22)], sigma=1.5, peak=0.95) + 0.02
    feats = torch.randn(1, 8, 32, 48)
    out = enc.head(heat, feats)
    scores = out["scores"][0].sort(descending=True).values
    assert scores[1] > 0.8 and scores[2] < 0.1
    keep = out["keypoints"][0][out["scores"][0] > 0.5]
    assert sorted(to_pixels(keep, 48, 32)[:, 0].round().tolist()) == [10, 36]


def test_infer_outputs_follow_the_contract_on_non_square_images():
    torch.manual_seed(0)
    enc = build_encoder("tusk", {"num_keypoints": 5, "num_prototypes": 7, "nms_window": 5, "width": 8, "descriptor_dim": 16}).eval()
    out = enc.infer(torch.rand(2, 3, 20, 37))
    assert set(out) == {"keypoints", "scores", "descriptors", "prototype_ids", "distances"}
    assert out["keypoints"].shape == (2, 5, 2) and out["keypoints"].abs().max() <= 1.0
    assert out["scores"].shape == (2, 5) and 0 <= out["scores"].min() and out["scores"].max() <= 1
    assert torch.allclose(out["descriptors"].norm(dim=-1), torch.ones(2, 5), atol=1e-5)
    assert out["prototype_ids"].dtype == torch.int64 and out["prototype_ids"].max() < enc.num_prototypes
    dist = prototype_distances(out["descriptors"], enc.normalized_prototypes())
    assert torch.allclose(out["distances"], dist.min(-1).values)
    assert torch.equal(out["prototype_ids"], dist.argmin(-1))


def test_keypoints_are_differentiable_through_the_soft_argmax():
    heat = blob_map(16, 16, [(5.2, 9.7)]).requires_grad_()
    kp = detect_keypoints(heat, 1, 5)
    kp.sum().backward()
    assert heat.grad is not None and heat.grad.abs().sum() > 0


def test_detached_descriptor_position_keeps_the_pull_off_the_keypoints():
    """Same descriptors; a loss on them moves the features but, detached, no longer the score map."""
    torch.manual_seed(0)
    feats = torch.randn(1, 8, 16, 16)
    grads = {}
    for detach in (False, True):
        enc = TuskEncoder(num_keypoints=1, num_prototypes=3, nms_window=5, width=8, descriptor_dim=8,
                          detach_descriptor_position=detach)
        heat = blob_map(16, 16, [(5.3, 9.6)]).requires_grad_()
        f = feats.clone().requires_grad_()
        out = enc.head(heat, f)
        out["descriptors"][..., 0].sum().backward()
        heat_grad = 0.0 if heat.grad is None else float(heat.grad.abs().sum())
        grads[detach] = (out["descriptors"].detach(), heat_grad, float(f.grad.abs().sum()))
    assert torch.equal(grads[False][0], grads[True][0])
    assert grads[False][1] > 0 and grads[True][1] == 0
    assert grads[True][2] > 0


def test_exports_to_onnx_and_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")

    class Wrapper(torch.nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.enc = enc

        def forward(self, x):
            o = self.enc.infer(x)
            return o["keypoints"], o["scores"], o["descriptors"], o["prototype_ids"], o["distances"]

    torch.manual_seed(0)
    enc = TuskEncoder(num_keypoints=3, num_prototypes=5, nms_window=5, width=8, descriptor_dim=8).eval()
    x = torch.rand(1, 3, 24, 30)
    path = tmp_path / "tusk.onnx"
    torch.onnx.export(Wrapper(enc), (x,), str(path), opset_version=17, dynamo=False,
                      input_names=["image"], output_names=["keypoints", "scores", "descriptors", "prototype_ids", "distances"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = Wrapper(enc)(x)
    for g, w_ in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w_.numpy(), atol=1e-4)


