"""The Pyramids quality benchmark keeps the paper's FPN map sizes at any image size."""

import pytest
import torch

from kp_perception.models import build_encoder
from kp_perception_bench.pyramids_quality import PAPER_FINEST_MAP, paper_finest_stride


@pytest.mark.parametrize("size", [64, 128])
def test_benchmark_stride_gives_the_paper_maps(size):
    encoder = build_encoder(
        "pyramids", {"width": 4, "fpn_channels": 8, "head_channels": 8, "finest_stride": paper_finest_stride(size)}
    )
    maps = encoder.level_features(torch.zeros(1, 3, size, size))
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 16), (32, 32)]


@pytest.mark.parametrize("size", [16, 48, 96, 200, 256])
def test_benchmark_stride_is_the_largest_that_keeps_32_cells(size):
    stride = paper_finest_stride(size)
    assert stride & (stride - 1) == 0
    assert size // stride >= PAPER_FINEST_MAP or stride == 1
    assert size // (2 * stride) < PAPER_FINEST_MAP
