"""The one sampler of training pairs (x, x_ref) for Keypoint Pyramids and its baselines.

Each epoch visits every frame of every sequence once as x (in a shuffled
order), and pairs it with a reference frame x_ref drawn uniformly from the
same sequence, at most ``max_ref_gap`` frames away and different from x when
the sequence has more than one frame (the paper: "a random frame of the same
video, at most 250 frames away").

Everything is a pure function of (seed, epoch): the reference of a frame
does not depend on the rank or on the number of ranks, and the visiting
order is one global permutation. For DDP, the permutation is cut to a
multiple of ``world_size`` (the last ``total % world_size`` frames of that
epoch's order are dropped, a different few each epoch) and rank r takes
positions r, r + world_size, ...: the shards are disjoint and equally long,
so every rank runs the same number of steps.

Usable directly as a DataLoader ``sampler=``: iterating yields this rank's
(seq_idx, frame_idx, ref_idx) tuples, which ``FramePairDataset`` accepts as
indices.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from kp_perception.errors import ConfigError


class PairSampler:
    """Pairs (seq_idx, frame_idx, ref_idx) over sequences of the given lengths.

    Args:
        sequence_lengths: frames per sequence (each ≥ 1).
        max_ref_gap: largest |ref_idx - frame_idx| (≥ 1).
        seed: base seed; epoch e uses (seed, e).
        rank, world_size: this process's shard for DDP (defaults: no sharding).
        shuffle: visit frames in a random order (True for training).
    """

    def __init__(
        self,
        sequence_lengths: list[int],
        max_ref_gap: int = 250,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        lengths = [int(n) for n in sequence_lengths]
        if not lengths or min(lengths) < 1:
            raise ConfigError(f"pair sampler needs sequences with at least one frame, got lengths {lengths}")
        if int(max_ref_gap) < 1:
            raise ConfigError(f"max_ref_gap must be >= 1, got {max_ref_gap}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} outside world size {world_size}")
        if sum(lengths) < world_size:
            raise ConfigError(f"{sum(lengths)} frames cannot be shared among {world_size} ranks")
        self.sequence_lengths = lengths
        self.max_ref_gap = int(max_ref_gap)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle = shuffle
        self.epoch = 0
        # Global frame g belongs to sequence seq_of[g], frame g - offsets[seq_of[g]].
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.total = int(sum(lengths))
        self.seq_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        self._cached: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose pairs are produced (call before each epoch, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Pairs per epoch on this rank."""
        return self.total // self.world_size

    def references(self, epoch: int | None = None) -> np.ndarray:
        """ref_idx of every global frame for ``epoch`` (length = total frames), independent of rank."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        frame = np.arange(self.total, dtype=np.int64) - self.offsets[self.seq_of]
        u = np.random.default_rng([self.seed, epoch, 0]).random(self.total)
        ref = self._reference_from_uniform(self.seq_of, frame, u)
        self._cached = (epoch, ref)
        return ref

    def _reference_from_uniform(self, seq: np.ndarray, frame: np.ndarray, u: np.ndarray) -> np.ndarray:
        """The reference for uniform draws ``u`` in [0, 1): uniform over the window without the frame."""
        length = np.asarray(self.sequence_lengths, dtype=np.int64)[seq]
        lo = np.maximum(0, frame - self.max_ref_gap)
        hi = np.minimum(length - 1, frame + self.max_ref_gap)
        # Candidates are lo..hi without the frame itself: draw among (hi - lo) of them, skip over frame.
        choices = hi - lo
        ref = lo + np.minimum((u * choices).astype(np.int64), np.maximum(choices - 1, 0))
        ref = np.where(ref >= frame, ref + 1, ref)
        return np.where(choices == 0, frame, ref)  # one-frame sequence: the frame is its own reference

    def draw_reference(self, seq_idx: int, frame_idx: int, u: float) -> int:
        """A reference for (seq_idx, frame_idx) from one uniform draw ``u`` in [0, 1) (same rule as epochs)."""
        ref = self._reference_from_uniform(np.array([seq_idx]), np.array([frame_idx]), np.array([u]))
        return int(ref[0])

    def pairs(self, epoch: int | None = None) -> np.ndarray:
        """This rank's pairs for ``epoch`` as an M×3 int64 array (seq_idx, frame_idx, ref_idx)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, 1]).permutation(self.total)
        else:
            order = np.arange(self.total)
        order = order[: len(self) * self.world_size][self.rank :: self.world_size]
        seq = self.seq_of[order]
        frame = order - self.offsets[seq]
        ref = self.references(epoch)[order]
        return np.stack([seq, frame, ref], axis=1)

    def pair_for(self, seq_idx: int, frame_idx: int, epoch: int | None = None) -> tuple[int, int, int]:
        """The pair whose x is (seq_idx, frame_idx) in ``epoch``."""
        g = int(self.offsets[seq_idx]) + int(frame_idx)
        return int(seq_idx), int(frame_idx), int(self.references(epoch)[g])

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        yield from map(tuple, self.pairs().tolist())
