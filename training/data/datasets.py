"""torch Datasets over cached sequences: single frames and (x, x_ref) pairs.

Frames come from the frame cache (N×H×W×3 uint8 memmaps, one per sequence,
see ``frame_cache.py``), so a sample costs a memory copy, not a decode.
Images are returned as 3×H×W float32 RGB in [0, 1], the models' convention.

Typical use::

    loaded = load_cached_sequences(paths, size=128)
    train = FramePairDataset([frames for _, frames in loaded], max_ref_gap=250, seed=0,
                             rank=rank, world_size=world)
    loader = DataLoader(train, batch_size=16, sampler=train.pair_sampler, num_workers=2)
    for epoch in ...:
        train.set_epoch(epoch)

Two ways to index a FramePairDataset:

- a (seq, frame, ref) tuple, as yielded by ``sampler=train.pair_sampler``:
  the shuffled, DDP-sharded order whose references are fixed by (seed, epoch);
- an integer g (frame g of the concatenated sequences), as from a plain
  DataLoader or the trainer's own sharded stream: the reference is drawn
  afresh on each access with torch's global generator (which DataLoader
  seeds per worker and the trainer per item), by the same rule as the
  sampler's. A fresh draw, not "that epoch's reference", so that x is paired
  with a new x_ref each time it is visited whoever does the shuffling.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as SequenceABC
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from kp_perception.errors import DataError
from kp_perception.sequences import Sequence, open_sequences
from kp_perception_training.data.frame_cache import build_frame_cache
from kp_perception_training.data.pair_sampler import PairSampler


def parse_size(size: int | SequenceABC[int]) -> tuple[int, int]:
    """Training resolution as (width, height): an int is square, a pair is [w, h]."""
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    values = [int(v) for v in size]
    if len(values) != 2 or min(values) <= 0:
        raise DataError(f"image size must be an int or [width, height], got {size!r}")
    return values[0], values[1]


def load_cached_sequences(
    paths: Iterable[str | Path],
    size: int | SequenceABC[int],
    image_topic: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> list[tuple[Sequence, np.memmap]]:
    """Open every sequence under ``paths`` and return it with its N×H×W×3 uint8 cache at ``size``."""
    width, height = parse_size(size)
    return [
        (seq, build_frame_cache(seq, width, height, cache_dir, progress))
        for seq in open_sequences(paths, image_topic)
    ]


def _frames_of(caches: SequenceABC) -> list[np.ndarray]:
    """Accept memmaps or (Sequence, memmap) pairs as returned by load_cached_sequences."""
    frames = [c[1] if isinstance(c, tuple) else c for c in caches]
    if not frames:
        raise DataError("no sequences to build a dataset from")
    shapes = {f.shape[1:] for f in frames}
    if len(shapes) != 1:
        raise DataError(f"cached sequences differ in frame size: {sorted(shapes)}")
    return frames


def to_tensor(frame: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 -> 3×H×W float32 in [0, 1]."""
    return torch.from_numpy(np.array(frame, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)


class FrameDataset(Dataset):
    """Every frame of every cached sequence: {"image": 3×H×W, "sequence": int, "frame": int}."""

    def __init__(self, caches: SequenceABC) -> None:
        self.frames = _frames_of(caches)
        lengths = [len(f) for f in self.frames]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(sequence, frame) of global index ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"frame index {index} out of range ({len(self)} frames)")
        seq = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return seq, int(index - self.offsets[seq])

    def __getitem__(self, index: int) -> dict:
        seq, frame = self.locate(int(index))
        return {"image": to_tensor(self.frames[seq][frame]), "sequence": seq, "frame": frame}


class FramePairDataset(Dataset):
    """Pairs from one sequence: {"image", "ref": 3×H×W float32, "sequence", "frame", "ref_frame": int}.

    ``pair_sampler`` defaults to a PairSampler over the caches' lengths built
    from ``max_ref_gap``, ``seed``, ``rank`` and ``world_size``.
    """

    def __init__(
        self,
        caches: SequenceABC,
        pair_sampler: PairSampler | None = None,
        max_ref_gap: int = 250,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.frames = _frames_of(caches)
        lengths = [len(f) for f in self.frames]
        if pair_sampler is None:
            pair_sampler = PairSampler(lengths, max_ref_gap, seed, rank, world_size)
        elif pair_sampler.sequence_lengths != lengths:
            raise DataError(
                f"pair sampler lengths {pair_sampler.sequence_lengths} do not match the caches' {lengths}"
            )
        self.pair_sampler = pair_sampler
        self._frame_index = FrameDataset(self.frames)

    def set_epoch(self, epoch: int) -> None:
        """New references (and sampler order) for ``epoch``."""
        self.pair_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._frame_index)

    def __getitem__(self, index) -> dict:
        if isinstance(index, tuple | list | np.ndarray | torch.Tensor) and len(index) == 3:
            seq, frame, ref = (int(v) for v in index)
        else:
            seq, frame = self._frame_index.locate(int(index))
            ref = self.pair_sampler.draw_reference(seq, frame, float(torch.rand(())))
        frames = self.frames[seq]
        return {
            "image": to_tensor(frames[frame]),
            "ref": to_tensor(frames[ref]),
            "sequence": seq,
            "frame": frame,
            "ref_frame": ref,
        }
