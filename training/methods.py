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

The registries map a kind to ``"module:attribute"`` strings so importing this
module imports no method (and no method's heavy dependencies).
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from kp_perception.errors import ConfigError

# kind -> "module:class" of its TrainingMethod.
METHODS: dict[str, str] = {
    "pyramids": "kp_perception_training.pyramids.method:PyramidsMethod",
    "keynet": "kp_perception_training.pyramids.baselines:KeyNetMethod",
    "transporter": "kp_perception_training.pyramids.baselines:TransporterMethod",
    "tusk": "kp_perception_training.tusk.method:TuskMethod",
}

# kind -> "module:function" with signature
# evaluate(checkpoint: dict, data_paths: list[str], annotations: str | None,
#          out_dir: Path | None, seed: int = 0) -> dict   (JSON-able metrics; may write a plot into out_dir)
EVALUATORS: dict[str, str] = {
    "pyramids": "kp_perception_training.pyramids.evaluate:evaluate",
    "keynet": "kp_perception_training.pyramids.evaluate:evaluate",
    "transporter": "kp_perception_training.pyramids.evaluate:evaluate",
    "tusk": "kp_perception_training.tusk.evaluate:evaluate",
}


class TrainingMethod(nn.Module):
    """Base class of every training method; subclasses set ``kind`` and ``self.encoder``.

    ``forward`` is the training step's forward pass (so DDP can wrap the
    method): it returns the main loss the trainer back-propagates and steps
    with ``optimizers["main"]`` (AMP scaler, gradient clipping, DDP gradient
    sync are the trainer's job), scalar logs, and anything the method wants
    back in ``after_main_step`` (e.g. detached encoder outputs).
    """

    kind: ClassVar[str]
    encoder: nn.Module

    def __init__(self, config: dict) -> None:
        """``config`` is the full resolved config (sections model, data, loss, optim, train, ...)."""
        super().__init__()
        self.config = config

    @classmethod
    def build_datasets(cls, config: dict, data_paths: list[str]) -> tuple[Dataset, Dataset | None]:
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
        optim = self.config.get("optim", {})
        return {
            "main": torch.optim.Adam(
                self.parameters(), lr=float(optim.get("lr", 1e-4)), weight_decay=float(optim.get("weight_decay", 0.0))
            )
        }

    def configure_schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        """Optional LR schedulers by name; the trainer steps each once per training step and saves their state."""
        return {}

    def after_main_step(self, batch: dict[str, Tensor], extra: Any, optimizers: dict) -> dict[str, float]:
        """Run extra optimisation after the main step (TUSK's prototype steps on detached outputs).

        Parameters stepped here are outside DDP's gradient sync: under torchrun
        call ``kp_perception_training.distributed.all_reduce_grads(params)`` before stepping.
        """
        return {}

    def log_images(self, writer: Any, batch: dict[str, Tensor], step: int) -> None:
        """Write example images to the TensorBoard ``writer`` (called on rank 0 under ``torch.no_grad``)."""

    def images_in_batch(self, batch: dict[str, Tensor]) -> int:
        """Images one batch holds, for the images/s figure; default the batch size."""
        for value in batch.values():
            if isinstance(value, Tensor) and value.ndim > 0:
                return int(value.shape[0])
        return 0


def _resolve(spec: str, what: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"{what} {spec!r} is not available yet (module {exc.name} not found)") from None
        raise
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{what} {spec!r}: {module_name} has no attribute {attr!r}") from None


def resolve_method(kind_or_spec: str) -> type[TrainingMethod]:
    """The ``TrainingMethod`` class for a kind (``METHODS``) or a ``"module:Class"`` spec."""
    spec = METHODS.get(kind_or_spec, kind_or_spec)
    if ":" not in spec:
        raise ConfigError(f"unknown method kind {kind_or_spec!r}, expected one of {', '.join(METHODS)}")
    cls = _resolve(spec, "method")
    if not (isinstance(cls, type) and issubclass(cls, TrainingMethod)):
        raise ConfigError(f"method {spec!r} is not a TrainingMethod subclass")
    return cls


def resolve_evaluator(kind: str):
    """The evaluate function for a checkpoint kind (``EVALUATORS``)."""
    if kind not in EVALUATORS:
        raise ConfigError(f"no evaluator for model kind {kind!r}, expected one of {', '.join(EVALUATORS)}")
    return _resolve(EVALUATORS[kind], "evaluator")
