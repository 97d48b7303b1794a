"""TUSK losses and decoders: equivariance, sliced Wasserstein, k-means, perceptual, compositing."""

import pytest
import torch
import torch.nn.functional as F

from kp_perception.errors import ConfigError
from kp_perception_training.tusk.decoders import RgbaDecoder, SplatDecoder
from kp_perception_training.tusk.losses import (
    VGGPerceptual,
    ema_prototype_update,
    equivariance_loss,
    kmeans_loss,
    kmeans_schedule,
    reconstruction_loss,
    sliced_wasserstein_loss,
    uniformity_loss,
)
from kp_perception_training.tusk.prototype_restart import reseed_unused_prototypes
from kp_perception_training.tusk.tps import apply_tps, identity_tps, random_tps


def test_equivariance_loss_is_zero_for_an_equivariant_map_and_not_otherwise():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 24, 31)
    warp = random_tps(3, rotation=0.2, offset=0.1, tps_scale=0.05)
    warped = apply_tps(images, warp, padding_mode="reflection")
    conv = torch.nn.Conv2d(3, 4, 1)  # pointwise: commutes with any warp

    with torch.no_grad():
        assert equivariance_loss(conv(images), conv(warped), warp) < 1e-10
        ramp = torch.linspace(0, 1, 31).expand(1, 4, 24, 31)  # a fixed position-dependent map
        assert equivariance_loss(conv(images) + ramp, conv(warped) + ramp, warp) > 1e-3


def test_identity_tps_leaves_maps_unchanged():
    x = torch.rand(2, 5, 17, 23)
    assert torch.allclose(apply_tps(x, identity_tps(2)), x, atol=1e-5)


def test_sliced_wasserstein_moves_prototypes_towards_the_descriptors():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(2, 16), dim=1)
    desc = F.normalize(centres.repeat_interleave(64, 0) + 0.05 * torch.randn(128, 16), dim=1)
    protos = torch.nn.Parameter(F.normalize(torch.randn(4, 16), dim=1))
    opt = torch.optim.Adam([protos], lr=0.1, betas=(0.5, 0.999))

    def nearest_centre_distance():
        p = F.normalize(protos.detach(), dim=1)
        return ((centres[:, None] - p[None]) ** 2).mean(-1).min(1).values  # per cluster

    before = nearest_centre_distance()
    for _ in range(150):
        opt.zero_grad()
        sliced_wasserstein_loss(desc, protos).backward()
        opt.step()
    after = nearest_centre_distance()
    assert (after < 0.2 * before).all(), (before, after)  # every cluster got a prototype
    assert after.max() < 0.005


def test_collapsed_prototypes_are_reseeded_onto_the_unexplained_cluster():
    # The state seen in training (docs/tusk.md): one prototype between the two clusters takes
    # every descriptor, the others are never chosen, so sliced-Wasserstein steps (which sample
    # prototypes by use) never split the winner.
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(2, 16), dim=1)
    desc = F.normalize(centres.repeat_interleave(64, 0) + 0.05 * torch.randn(128, 16), dim=1)
    protos = torch.cat([F.normalize(centres.mean(0, keepdim=True), dim=1), -F.normalize(torch.randn(3, 16), dim=1)])
    ids = ((desc[:, None] - protos[None]) ** 2).mean(-1).argmin(1)
    counts = torch.bincount(ids, minlength=4).double()
    assert counts[0] == 128  # collapsed

    dead = reseed_unused_prototypes(protos, desc, counts, below=0.1, generator=torch.Generator().manual_seed(0))
    assert dead.sum() == (counts < 0.1 * 128 / 4).sum() >= 1
    assert torch.allclose(protos.norm(dim=1), torch.ones(4))
    ids = ((desc[:, None] - protos[None]) ** 2).mean(-1).argmin(1)
    # Now no prototype is shared between the clusters: purity 1.
    assert not set(ids[:64].tolist()) & set(ids[64:].tolist())
    assert not dead[counts >= 0.1 * 128 / 4].any()  # used prototypes were left alone


def test_sliced_wasserstein_does_not_touch_the_descriptors():
    desc = F.normalize(torch.randn(20, 8), dim=1).requires_grad_()
    protos = torch.nn.Parameter(torch.randn(3, 8))
    sliced_wasserstein_loss(desc, protos).backward()
    assert desc.grad is None and protos.grad is not None


def test_kmeans_loss_pulls_descriptors_to_their_nearest_prototype_only():
    protos = torch.nn.Parameter(F.normalize(torch.eye(4), dim=1))
    desc = F.normalize(torch.tensor([[1.0, 0.3, 0.0, 0.0]]), dim=1).requires_grad_()
    loss = kmeans_loss(desc, protos)
    loss.backward()
    assert protos.grad is None
    stepped = F.normalize(desc - 0.1 * desc.grad, dim=1)
    assert kmeans_loss(stepped, protos) < loss
    # Weighted: a zero-weight descriptor does not count.
    far = F.normalize(torch.tensor([[0.5, 0.5, 0.5, 0.5]]), dim=1)
    both = torch.cat([desc.detach(), far])
    assert kmeans_loss(both, protos, weights=torch.tensor([1.0, 0.0])) == pytest.approx(loss.item())


def test_reconstruction_loss_is_mse():
    a, b = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    assert reconstruction_loss(a, b) == pytest.approx(0.25)


def test_perceptual_loss_fails_clearly_without_local_weights(tmp_path):
    with pytest.raises(ConfigError, match="vgg16_weights"):
        VGGPerceptual(None)
    with pytest.raises(ConfigError, match="not found"):
        VGGPerceptual(tmp_path / "vgg16.pth")


def test_rgba_decoder_composites_with_alpha_summing_to_one():
    torch.manual_seed(0)
    dec = RgbaDecoder(descriptor_dim=8, hidden=16, sprite_px=7)
    kp = torch.tensor([[[-0.5, -0.5], [0.5, 0.4]]])
    out = dec(kp, torch.tensor([[0.9, 0.8]]), F.normalize(torch.randn(1, 2, 8), dim=-1), (12, 20))
    assert out["reconstruction"].shape == (1, 3, 12, 20)
    assert out["alpha"].shape == (1, 2, 12, 20)
    assert torch.allclose(out["alpha"].sum(1), torch.ones(1, 12, 20), atol=1e-5)
    with_bg = RgbaDecoder(descriptor_dim=8, hidden=16, sprite_px=7, background=True)
    alpha = with_bg(kp, torch.tensor([[0.9, 0.8]]), F.normalize(torch.randn(1, 2, 8), dim=-1), (12, 20))["alpha"]
    assert alpha.shape == (1, 3, 12, 20)
    assert torch.allclose(alpha.sum(1), torch.ones(1, 12, 20), atol=1e-5)


def test_rgba_sprite_is_pasted_at_its_keypoint():
    """A layer equals its sprite around the keypoint, shifted with it, and is black outside it."""
    torch.manual_seed(0)
    dec = RgbaDecoder(descriptor_dim=4, hidden=8, sprite_px=5)
    desc = F.normalize(torch.randn(1, 1, 4), dim=-1)
    sprite_rgb = dec.sprites(desc)[0, 0, :3]  # 3×5×5
    h = w = 15
    for cx, cy in ((4, 6), (10, 9)):
        kp = torch.tensor([[[cx / (w - 1) * 2 - 1, cy / (h - 1) * 2 - 1]]])
        rgb = dec(kp, torch.ones(1, 1), desc, (h, w))["rgb"][0, 0]
        assert torch.allclose(rgb[:, cy - 2 : cy + 3, cx - 2 : cx + 3], sprite_rgb, atol=1e-5)
        outside = torch.ones(h, w, dtype=torch.bool)
        outside[cy - 2 : cy + 3, cx - 2 : cx + 3] = False
        assert rgb[:, outside].abs().max() < 1e-6


def test_rgba_decoder_gives_keypoints_a_gradient():
    torch.manual_seed(0)
    dec = RgbaDecoder(descriptor_dim=4, hidden=8, sprite_px=7)
    kp = torch.tensor([[[0.1, -0.2], [-0.3, 0.25]]], requires_grad=True)
    out = dec(kp, torch.ones(1, 2), F.normalize(torch.randn(1, 2, 4), dim=-1), (16, 16))
    (out["reconstruction"] - 0.3).pow(2).sum().backward()
    assert kp.grad.abs().min() > 0


def test_empty_slots_do_not_paint():
    """A slot with score 0 contributes nothing: its descriptor gets no gradient (varying object counts).

    For the sprite decoder that needs the background layer: without it some layer must own every pixel.
    """
    torch.manual_seed(0)
    kp = torch.tensor([[[-0.5, 0.0], [0.5, 0.0]]])
    scores = torch.tensor([[1.0, 0.0]])
    for dec in (SplatDecoder(descriptor_dim=4, width=8), RgbaDecoder(descriptor_dim=4, hidden=8, sprite_px=9, outside_logit=-12.0, background=True)):
        desc = F.normalize(torch.randn(1, 2, 4), dim=-1).requires_grad_()
        dec(kp, scores, desc, (16, 16))["reconstruction"].sum().backward()
        assert desc.grad[0, 0].abs().sum() > 0
        assert desc.grad[0, 1].abs().max() < 1e-3 * desc.grad[0, 0].abs().max()


def test_background_image_learns_a_textured_table_a_colour_cannot():
    """With ``background_px`` the background layer fits a fixed textured scene; one colour cannot."""
    torch.manual_seed(0)
    h = w = 24
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    table = torch.stack([(xx // 6 + yy // 6) % 2 * 0.5 + 0.25, xx / w, yy / h]).float()[None]  # 1×3×H×W
    kp = torch.tensor([[[0.0, 0.0]]])
    errors = {}
    for px in (None, 24):
        dec = RgbaDecoder(descriptor_dim=4, hidden=8, sprite_px=5, outside_logit=-12.0, background=True, background_px=px)
        desc = F.normalize(torch.randn(1, 1, 4), dim=-1)
        opt = torch.optim.Adam(dec.parameters(), lr=0.1)
        for _ in range(150):
            opt.zero_grad()
            loss = (dec(kp, torch.full((1, 1), 1e-4), desc, (h, w))["reconstruction"] - table).pow(2).mean()
            loss.backward()
            opt.step()
        errors[px] = loss.item()
    assert errors[24] < 1e-3
    assert errors[None] > 20 * errors[24]


def test_background_starts_at_the_static_scene_of_the_first_batch():
    """init_background: the median of frames in which a small object moves is the table without it."""
    torch.manual_seed(0)
    table = torch.rand(3, 16, 16) * 0.6 + 0.2
    frames = table.repeat(5, 1, 1, 1)
    for i in range(5):
        frames[i, :, 3 * i : 3 * i + 3, 2:5] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    dec = RgbaDecoder(descriptor_dim=4, hidden=8, sprite_px=5, background=True, background_px=16)
    assert not bool(dec.background_ready)
    dec.init_background(frames)
    assert bool(dec.background_ready)
    assert torch.allclose(dec.background_colours(16, 16)[0], table, atol=1e-5)
    assert "background_ready" in dec.state_dict()


# ----------------------------------------------------------------- prototype schemes (issue 15)
def test_kmeans_schedule_is_off_during_warmup_then_ramps_linearly_to_one():
    assert [kmeans_schedule(s, 10, 4) for s in (0, 9, 10, 11, 13, 100)] == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    assert kmeans_schedule(0) == 1.0  # defaults: always on, as before
    assert kmeans_schedule(5, 5, 0) == 1.0


def test_uniformity_is_lower_for_spread_descriptors_and_its_gradient_spreads_them():
    torch.manual_seed(0)
    spread = F.normalize(torch.randn(64, 8), dim=1)
    tight = F.normalize(torch.ones(64, 8) + 0.05 * torch.randn(64, 8), dim=1)
    assert uniformity_loss(spread) < uniformity_loss(tight) - 1.0
    x = tight.clone().requires_grad_(True)
    before = torch.pdist(tight).mean()
    for _ in range(50):
        loss = uniformity_loss(F.normalize(x, dim=1))
        grad, = torch.autograd.grad(loss, x)
        x = (x - 0.5 * grad).detach().requires_grad_(True)
    assert torch.pdist(F.normalize(x, dim=1)).mean() > 2 * before


def test_uniformity_weights_leave_out_zero_weight_descriptors():
    torch.manual_seed(0)
    desc = F.normalize(torch.randn(10, 8), dim=1)
    moved = desc.clone()
    moved[0] = desc[1]  # a duplicate, but with weight 0
    w = torch.ones(10)
    w[0] = 0
    assert torch.allclose(uniformity_loss(moved, weights=w), uniformity_loss(desc[1:]))


def test_ema_update_moves_used_prototypes_to_their_cluster_means_and_leaves_unused_ones():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(2, 16), dim=1)
    desc = F.normalize(centres.repeat_interleave(32, 0) + 0.02 * torch.randn(64, 16), dim=1)
    protos = F.normalize(centres + 0.3 * torch.randn(2, 16), dim=1)
    protos = torch.cat([protos, -centres[:1]])  # the third is nearest to nothing
    unused = protos[2].clone()
    start = (protos[:2] - centres).norm(dim=1)
    for _ in range(30):
        counts = ema_prototype_update(protos, desc, decay=0.8)
    assert counts.tolist() == [32.0, 32.0, 0.0]
    assert ((protos[:2] - centres).norm(dim=1) < 0.1 * start).all()
    assert torch.equal(protos[2], unused)
    assert torch.allclose(protos.norm(dim=1), torch.ones(3))


def test_scheme_options_default_to_the_reference_behaviour_and_bad_decay_is_refused():
    from kp_perception_training.config import build_config
    from kp_perception_training.tusk.config import TuskConfig

    cfg = build_config(TuskConfig, {})
    assert cfg.prototypes.update == "sw" and cfg.loss.uniformity == 0.0
    assert cfg.loss.kmeans_warmup_steps == 0 and cfg.loss.kmeans_ramp_steps == 0
    with pytest.raises(ConfigError, match="ema_decay"):
        build_config(TuskConfig, {"prototypes": {"update": "ema", "ema_decay": 1.5}})
