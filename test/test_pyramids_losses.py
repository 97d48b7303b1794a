"""The three Keypoint Pyramids losses (Eq. 1, 3, 4) and the transport operations, as pure functions."""

import pytest
import torch

from kp_perception_training.pyramids.decoders import sequential_transport, transport_features
from kp_perception_training.pyramids.losses import reconstruction_loss, spring_loss, transport_loss


def test_reconstruction_loss_is_per_image_squared_error_averaged_over_batch():
    x = torch.zeros(2, 3, 4, 4)
    recon = x.clone()
    recon[0, 0, 0, 0] = 2.0  # image 0: SSE 4; image 1: 0
    assert reconstruction_loss(x, x).item() == 0.0
    assert reconstruction_loss(recon, x).item() == pytest.approx(2.0)


def test_reconstruction_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_transport_loss_weights_each_level():
    x = torch.zeros(1, 3, 2, 2)
    level1 = torch.full_like(x, 1.0)  # SSE 12
    level2 = torch.full_like(x, 0.5)  # SSE 3
    loss = transport_loss([level1, level2], x, [0.1, 1.0])
    assert loss.item() == pytest.approx(0.1 * 12 + 1.0 * 3)
    with pytest.raises(ValueError, match="level weights"):
        transport_loss([level1], x, [0.1, 1.0])


def test_spring_loss_is_zero_when_children_sit_on_their_parents():
    parents = torch.tensor([[[0.5, -0.5], [-0.2, 0.3]]])
    children = parents.repeat_interleave(3, dim=1)  # M = 3: children 0-2 -> parent 0, 3-5 -> parent 1
    assert spring_loss([parents, children]).item() == pytest.approx(0.0)
    swapped = torch.cat([children[:, 3:], children[:, :3]], dim=1)  # every child on the wrong parent
    assert spring_loss([parents, swapped]).item() > 0.1


def test_spring_loss_pulls_children_towards_their_parent():
    torch.manual_seed(0)
    parents = torch.rand(2, 4, 2) * 2 - 1
    children = (torch.rand(2, 8, 2) * 2 - 1).requires_grad_(True)
    anchor = parents.repeat_interleave(2, dim=1)
    start = (children - anchor).norm(dim=-1).detach()
    loss = spring_loss([parents, children], weight=1.0)
    loss.backward()
    # The gradient points from parent to child, so a descent step moves every child towards its parent.
    direction = (children - anchor).detach()
    assert torch.all((children.grad * direction).sum(-1) > 0)
    with torch.no_grad():
        moved = children - 0.1 * children.grad
    after = (moved - anchor).norm(dim=-1)
    assert torch.all(after < start)


def test_spring_loss_scales_with_lambda_and_sums_over_levels():
    k1 = torch.zeros(1, 1, 2)
    k2 = torch.tensor([[[0.1, 0.0], [0.0, 0.2]]])
    k3 = torch.zeros(1, 4, 2)
    one = spring_loss([k1, k2], weight=1.0).item()
    assert one == pytest.approx(0.01 + 0.04)
    assert spring_loss([k1, k2], weight=2.0).item() == pytest.approx(2 * one)
    # level 2 -> 3 adds each grandchild's distance to its own parent (children 0,1 -> k2[0]; 2,3 -> k2[1])
    assert spring_loss([k1, k2, k3]).item() == pytest.approx(one + 2 * 0.01 + 2 * 0.04)


def test_spring_loss_rejects_uneven_children():
    with pytest.raises(ValueError, match="evenly"):
        spring_loss([torch.zeros(1, 2, 2), torch.zeros(1, 3, 2)])


def test_transport_features_keep_reference_away_from_keypoints_and_copy_source_at_them():
    feat_x = torch.full((1, 2, 3, 3), 5.0, requires_grad=True)
    feat_ref = torch.full((1, 2, 3, 3), -1.0, requires_grad=True)
    mask_x = torch.zeros(1, 1, 3, 3)
    mask_ref = torch.zeros(1, 1, 3, 3)
    mask_x[..., 0, 0] = 1.0  # keypoint of x
    mask_ref[..., 2, 2] = 1.0  # keypoint of x_ref: its features are removed, filled with x's
    out = transport_features(feat_x, feat_ref, mask_x, mask_ref)
    assert torch.all(out[..., 0, 0] == 5.0)
    assert torch.all(out[..., 2, 2] == 5.0)
    assert torch.all(out[..., 1, 1] == -1.0)
    out.sum().backward()
    assert feat_x.grad is not None
    assert feat_ref.grad is None  # stop-gradient on the reference side


def test_sequential_transport_moves_each_keypoint_in_turn():
    feat_x = torch.full((1, 1, 1, 3), 7.0)
    feat_ref = torch.zeros(1, 1, 1, 3)
    heat_ref = torch.tensor([[[[1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]]])  # K = 2
    heat_x = torch.tensor([[[[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]]])
    out = sequential_transport(feat_x, feat_ref, heat_x, heat_ref)
    # position 0: reference keypoint removed (0); 1 and 2: x's keypoints pasted (7)
    assert out.flatten().tolist() == [0.0, 7.0, 7.0]
