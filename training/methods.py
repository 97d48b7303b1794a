"""What a training method is, and which methods and evaluators exist.

The one trainer (``kp_perception_training.trainer``) runs any ``TrainingMethod``: Keypoint
Pyramids, the flat KeyNet/Transporter baselines and TUSK. A method owns its
robot-side ``encoder`` (saved as ``checkpoint["encoder"]`` and exported), its
training-only parts (decoders, ...), its datasets and its optimisers; the
trainer owns the loop, checkpoints/resume, DDP, mixed precision, logging and
the time budget.

Batches are dicts of tensors (the default collate of a dataset whose items
are dicts); the trainer moves every tensor to the device before calling the
method.

Which method and evaluator a kind uses is the kind registry's
(``kp_perception.kinds``); they are imported only when resolved.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from kp_perception.errors import ConfigError
from kp_perception.kinds import KINDS, get_kind, resolve
from kp_perception_training.config import TrainingConfig


class TrainingMethod(nn.Module):
    """Base class of every training method; subclasses set ``kind`` and ``self.encoder``.

    ``forward`` is the training step's forward pass (so DDP can wrap the
    method): it returns the main loss the trainer back-propagates and steps
    with ``optimizers["main"]`` (AMP scaler, gradient clipping, DDP gradient
    sync are the trainer's job), scalar logs, and anything the method wants
    back in ``after_main_step`` (e.g. detached encoder outputs).
    """

    kind: ClassVar[str]
    config_class: ClassVar[type | None] = None  # the kind's config dataclass (a TrainingConfig)
    encoder: nn.Module

    def __init__(self, config: TrainingConfig) -> None:
        """``config`` is the resolved, typed config (an instance of ``config_class``)."""
        super().__init__()
        if self.config_class is not None and not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    @classmethod
    def build_datasets(cls, config: TrainingConfig, data_paths: list[str]) -> tuple[Dataset, Dataset | None]:
        """Return (train, val) datasets whose items are dicts of tensors; val may be None.

        Any per-item randomness in ``__getitem__`` is made reproducible by the
        trainer, which seeds python/numpy/torch per item from (seed, position).
        """
        raise NotImplementedError

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float], Any]:
        """Compute (main loss, scalar logs, extra) for one batch."""
        raise NotImplementedError

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers by name; ``"main"`` is stepped by the trainer.

        Default: Adam over every parameter with ``optim.lr`` and ``optim.weight_decay``.
        """
        optim = self.config.optim
        return {"main": torch.optim.Adam(self.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)}

    def configure_schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        """Optional LR schedulers by name; the trainer steps each once per training step and saves their state."""
        return {}

    def after_main_step(self, batch: dict[str, Tensor], extra: Any, optimizers: dict) -> dict[str, float]:
        """Run extra optimisation after the main step (TUSK's prototype steps on detached outputs).

        Parameters stepped here are outside DDP's gradient sync: under torchrun
        call ``kp_perception_training.distributed.all_reduce_grads(params)`` before stepping.
        """
        return {}

    def encoder_state_for_use(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The encoder state a checkpoint saves for eval, export and inference; default as trained.

        ``training.method`` always keeps the live state, so a resume is unaffected.
        """
        return state

    def log_images(self, writer: Any, batch: dict[str, Tensor], step: int) -> None:
        """Write example images to the TensorBoard ``writer`` (called on rank 0 under ``torch.no_grad``)."""

    def images_in_batch(self, batch: dict[str, Tensor]) -> int:
        """Images one batch holds, for the images/s figure; default the batch size."""
        for value in batch.values():
            if isinstance(value, Tensor) and value.ndim > 0:
                return int(value.shape[0])
        return 0


def resolve_method(kind_or_spec: str) -> type[TrainingMethod]:
    """The ``TrainingMethod`` class for a kind (the registry's) or a ``"module:Class"`` spec."""
    if kind_or_spec in KINDS:
        spec = KINDS[kind_or_spec].method
    elif ":" in kind_or_spec:
        spec = kind_or_spec
    else:
        raise ConfigError(f"unknown method kind {kind_or_spec!r}, expected one of {', '.join(KINDS)}")
    cls = resolve(spec, "method")
    if not (isinstance(cls, type) and issubclass(cls, TrainingMethod)):
        raise ConfigError(f"method {spec!r} is not a TrainingMethod subclass")
    return cls


def resolve_evaluator(kind: str):
    """The evaluate function of a checkpoint kind (the registry's)::

        evaluate(checkpoint: dict, data_paths: list[str], annotations: str | None,
                 out_dir: Path | None, seed: int = 0) -> dict   (JSON-able metrics; may write a plot)
    """
    return resolve(get_kind(kind).evaluator, "evaluator")
