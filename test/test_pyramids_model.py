"""Keypoint ops and the Keypoint Pyramids encoder: conventions, hierarchy layout, flat mode, ONNX traceability."""

import math

import numpy as np
import pytest
import torch

from kp_perception.errors import ConfigError
from kp_perception.models import build_encoder
from kp_perception.models.keypoint_ops import (
    expected_coordinates,
    gaussian_heatmaps,
    keypoint_distribution,
    keypoint_scores,
)
from kp_perception.models.pyramids_encoder import hierarchy_parents

TINY = {"width": 4, "fpn_channels": 8, "head_channels": 8}


def test_expected_coordinates_follow_align_corners_convention():
    probs = torch.zeros(1, 3, 5, 9)
    probs[0, 0, 0, 0] = 1.0  # top-left pixel centre -> (-1, -1)
    probs[0, 1, 4, 8] = 1.0  # bottom-right -> (1, 1)
    probs[0, 2, 2, 6] = 1.0  # column 6 of 9 -> x = -1 + 6 * 2/8 = 0.5; row 2 of 5 -> y = 0
    xy = expected_coordinates(probs)[0]
    assert torch.allclose(xy, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.5, 0.0]]), atol=1e-6)


def test_spatial_softmax_sums_to_one_per_map():
    probs = keypoint_distribution(torch.randn(2, 4, 6, 7))
    assert torch.allclose(probs.sum(dim=(-2, -1)), torch.ones(2, 4), atol=1e-5)


def test_gaussian_heatmap_peaks_at_point_and_falls_to_exp_minus_one_at_sigma():
    h, w = 21, 21
    point = torch.tensor([[[0.0, 0.0]]])
    maps = gaussian_heatmaps(point, h, w, sigma=0.1)
    assert maps.shape == (1, 1, h, w)
    assert maps[0, 0, 10, 10].item() == pytest.approx(1.0)
    # one pixel = 0.1 in [-1, 1] units here, i.e. exactly sigma
    assert maps[0, 0, 10, 11].item() == pytest.approx(math.exp(-1.0), rel=1e-5)
    assert maps[0, 0, 11, 11].item() == pytest.approx(math.exp(-2.0), rel=1e-5)


def test_score_is_high_for_a_peaked_distribution_and_low_for_a_spread_one():
    peaked = torch.zeros(1, 1, 16, 16)
    peaked[0, 0, 5, 9] = 1.0
    flat = torch.full((1, 1, 16, 16), 1.0 / 256)
    s_peak = keypoint_scores(peaked, expected_coordinates(peaked))
    s_flat = keypoint_scores(flat, expected_coordinates(flat))
    assert s_peak.item() == pytest.approx(1.0)
    assert 0.0 <= s_flat.item() < 0.1


def test_parents_give_each_parent_m_consecutive_children():
    assert hierarchy_parents([2, 4]) == (-1, -1, 0, 0, 1, 1)
    assert hierarchy_parents([2, 6, 12]) == (-1, -1, 0, 0, 0, 1, 1, 1) + tuple(2 + j // 2 for j in range(12))


def test_pyramid_encoder_outputs_the_whole_hierarchy():
    enc = build_encoder("pyramids", {"keypoints_per_level": [3, 6], **TINY}).eval()
    with torch.no_grad():
        out = enc.infer(torch.rand(2, 3, 32, 32))
    assert set(out) == {"keypoints", "scores"}
    assert out["keypoints"].shape == (2, 9, 2)
    assert out["scores"].shape == (2, 9)
    assert out["keypoints"].abs().max() <= 1.0
    assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all()
    assert enc.level_sizes == (3, 6)
    assert enc.parents == (-1, -1, -1, 0, 0, 1, 1, 2, 2)


def test_levels_are_configuration_not_hard_coded():
    enc = build_encoder("pyramids", {"keypoints_per_level": [2, 4, 8], **TINY})
    feats = enc(torch.rand(1, 3, 64, 64))["features"]
    assert [f.shape[-1] for f in feats] == [4, 8, 16]  # coarse to fine, finest stride 4
    assert enc.infer(torch.rand(1, 3, 64, 64))["keypoints"].shape == (1, 14, 2)


def test_finer_levels_are_conditioned_on_the_previous_level_unless_unconditioned():
    cond = build_encoder("pyramids", {"keypoints_per_level": [3, 6], **TINY})
    uncond = build_encoder("pyramids", {"keypoints_per_level": [3, 6], "conditioned": False, **TINY})
    assert cond.heads[1].net[0][0].in_channels == 8 + 3
    assert uncond.heads[1].net[0][0].in_channels == 8


def test_detached_conditioning_keeps_the_finer_levels_loss_off_the_coarser_head():
    """With detach_conditioning, level 2's keypoints give level 1's head no gradient; without it they do."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    grads = {}
    for detach in (False, True):
        torch.manual_seed(1)
        enc = build_encoder("pyramids", {"keypoints_per_level": [3, 6], "detach_conditioning": detach, **TINY})
        enc(images)["keypoints"][1].sum().backward()
        grads[detach] = sum(p.grad.abs().sum() for p in enc.heads[0].parameters() if p.grad is not None)
    assert grads[False] > 0
    assert grads[True] == 0


def test_flat_baselines_use_one_level_on_the_finest_map():
    for kind in ("keynet", "transporter"):
        enc = build_encoder(kind, {"keypoints_per_level": [7], **TINY})
        out = enc(torch.rand(1, 3, 32, 32))
        assert enc.level_sizes == (7,)
        assert enc.parents == (-1,) * 7
        assert len(out["features"]) == 1 and out["features"][0].shape[-1] == 8  # 32 / stride 4
        assert len(enc.fpn(torch.rand(1, 3, 32, 32))) == 2  # the same two-level FPN as the pyramid


def test_bad_configs_raise_a_config_error():
    with pytest.raises(ConfigError, match="multiple"):
        build_encoder("pyramids", {"keypoints_per_level": [3, 5], **TINY})
    with pytest.raises(ConfigError, match="unknown model kind"):
        build_encoder("nope", {})
    with pytest.raises(ConfigError, match="unknown config key 'model.no_such_option'"):
        build_encoder("pyramids", {"no_such_option": 1})


def test_infer_exports_to_onnx_and_onnxruntime_matches_torch(tmp_path):
    import onnxruntime as ort

    enc = build_encoder("pyramids", {"keypoints_per_level": [2, 4], **TINY}).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, images):
            out = self.encoder.infer(images)
            return out["keypoints"], out["scores"]

    images = torch.rand(1, 3, 32, 48)  # non-square
    path = tmp_path / "enc.onnx"
    torch.onnx.export(Wrapper(enc).eval(), (images,), str(path), input_names=["images"], dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    kp, scores = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        ref = enc.infer(images)
    np.testing.assert_allclose(kp, ref["keypoints"].numpy(), atol=1e-4)
    np.testing.assert_allclose(scores, ref["scores"].numpy(), atol=1e-4)
