"""The one training loop: resume, TensorBoard, DDP under torchrun, mixed precision, time budget.

Every method (Keypoint Pyramids, KeyNet, Transporter, TUSK) is trained here;
see ``kp_perception_training.methods.TrainingMethod`` for what a method provides.

Run directory ``RUN/``:
    config.yaml   the resolved config
    last.pt       the latest checkpoint (every ``train.checkpoint_every`` steps,
                  at the end, on SIGINT/SIGTERM and when the time budget runs out)
    best.pt       the checkpoint with the lowest mean validation loss (when the
                  method has a val split) or else the lowest training-loss EMA
    tb/           TensorBoard scalars and the method's example images
    images/       the same example images as PNG, images/<tag>/<step>.png

Exact resume. Data order is a pure function of (seed, rank, position in the
stream): each rank walks an endless stream of per-epoch permutations
(``ShardedStream``), and every item is loaded with python/numpy/torch seeded
from its own position (``SeededItems``), so neither the number of loader
workers nor a stop/resume changes what a step sees. The checkpoint holds the
step, the method's state, optimisers, schedulers, AMP scaler and every rank's
python/numpy/torch RNG states; on CPU, N straight steps and k + (N - k)
resumed steps give bit-identical parameters.

Validation and image logging run with the RNGs forked, so they never shift
the training randomness.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, get_worker_info

from kp_perception.atomic import remove_stale_temporaries
from kp_perception.checkpoint import load_checkpoint, save_checkpoint
from kp_perception.errors import ConfigError, DataError, KpPerceptionError, ModelLoadError
from kp_perception_training import distributed as dist
from kp_perception_training.allocator import retain_freed_memory
from kp_perception_training.config import (
    TrainingConfig,
    TrainSettings,
    config_from_saved,
    dump_config,
    incompatible_keys,
    load_config,
)
from kp_perception_training.methods import TrainingMethod, resolve_method

log = logging.getLogger(__name__)

class TrainingDivergedError(KpPerceptionError):
    """The loss became NaN or infinite; the last checkpoint is left untouched."""


# ---------------------------------------------------------------------------------------------
# Deterministic, resumable, rank-sharded data order


def _item_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class ShardedStream:
    """Endless batch sampler for one rank: batches of ``(index, item_seed)``, starting at batch ``start``.

    Epoch ``e`` is a permutation of ``range(n)`` seeded by (seed, e), padded by
    wrapping to a multiple of ``world_size`` (as DistributedSampler does); rank
    ``r`` takes every ``world_size``-th entry from ``r``. Batch ``b`` of a rank
    is its stream positions ``[b*B, (b+1)*B)``, crossing epochs seamlessly, so
    the sampler state is just the step count (``state(step)``).
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0
    ) -> None:
        if n < 1:
            raise DataError("the training dataset is empty")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.per_rank = math.ceil(n / world_size)
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            padded = np.resize(perm, self.per_rank * self.world_size)  # wraps around like DistributedSampler
            self._epoch, self._perm = epoch, padded[self.rank :: self.world_size]
        return self._perm

    def batch(self, b: int) -> list[tuple[int, int]]:
        out = []
        for pos in range(b * self.batch_size, (b + 1) * self.batch_size):
            epoch, offset = divmod(pos, self.per_rank)
            index = int(self._permutation(epoch)[offset])
            out.append((index, _item_seed(self.seed, self.rank, pos)))
        return out

    def state(self, step: int) -> dict[str, int]:
        """Where the stream stands after ``step`` batches (saved in checkpoints for inspection)."""
        epoch, offset = divmod(step * self.batch_size, self.per_rank)
        return {"epoch": epoch, "offset": offset, "position": step * self.batch_size}

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.start
        while True:
            yield self.batch(b)
            b += 1


class SeededItems(Dataset):
    """Wraps a dataset so item ``(index, seed)`` is loaded with python/numpy/torch seeded by ``seed``.

    In the main process (num_workers=0) the global RNG states are restored
    afterwards, so loading never shifts the training randomness.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        if get_worker_info() is not None:
            _seed_all(seed)
            return self.dataset[index]
        with _forked_rng():
            _seed_all(seed)
            return self.dataset[index]


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


def _worker_init(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process checkpoints and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


@contextlib.contextmanager
def _forked_rng():
    """Run a block without changing the python/numpy/torch (CPU and CUDA) RNG states."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _rng_state() -> dict[str, Any]:
    """This process's RNG states in types ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    npy = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(npy["state"]["key"].astype(np.int64)),
            "pos": int(npy["state"]["pos"]),
            "has_gauss": int(npy["has_gauss"]),
            "gauss": float(npy["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _float32(value: Any) -> Any:
    """Half-precision tensors (from autocast) back to float32, so steps outside autocast mix no dtypes."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, dict):
        return {k: _float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_float32(v) for v in value)
    return value


def training_autocast(settings: TrainSettings, device: torch.device) -> torch.autocast:
    """The autocast of a training step: float16 on CUDA with ``amp``, bfloat16 on CPU with ``cpu_bf16``, else off."""
    use_amp = settings.amp and device.type == "cuda"
    use_bf16 = settings.cpu_bf16 and device.type == "cpu"
    dtype = torch.bfloat16 if use_bf16 else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=use_amp or use_bf16)


def _to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: _to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device, non_blocking) for v in batch)
    return batch


# ---------------------------------------------------------------------------------------------
# Run directory, resume and config compatibility


def resolve_run_config(
    kind: str,
    out_dir: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    method: str | type[TrainingMethod] | None = None,
) -> TrainingConfig:
    """The typed config for ``train KIND --out RUN``: a fresh one, or the run's own when it resumes.

    When ``RUN/last.pt`` exists and no ``--config`` is given, the run continues
    with its saved config plus ``overrides`` (which may only change
    ``RESUME_MUTABLE`` keys such as steps or budget; ``train()`` checks).
    ``method`` (a class or ``"module:Class"``) replaces the kind's method, e.g. in tests.
    """
    last = Path(out_dir) / "last.pt"
    if last.exists() and config is None:
        saved = _load_resume_checkpoint(last, kind)
        return config_from_saved(kind, saved["config"], str(last), overrides, method)
    return load_config(kind, config, overrides, method)


def _load_resume_checkpoint(last: Path, kind: str) -> dict:
    ckpt = load_checkpoint(last)
    if ckpt["kind"] != kind:
        raise ConfigError(
            f"{last}: this run directory holds a {ckpt['kind']!r} run, not {kind!r}; use another --out"
        )
    if not isinstance(ckpt.get("training"), dict) or "step" not in ckpt["training"]:
        raise ConfigError(f"{last}: checkpoint has no training state to resume from")
    return ckpt


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class _StopRequest:
    signal_name: str | None = None


@contextlib.contextmanager
def _stop_on_signals(request: _StopRequest):
    """First SIGINT/SIGTERM asks for a clean stop after the current step; a second one interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        if request.signal_name is not None:
            raise KeyboardInterrupt
        request.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def resolve_device(device: str | None) -> torch.device:
    """``cpu``, ``cuda`` or None (cuda when available); under torchrun on GPU, this rank's GPU."""
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"--device {name!r}: expected cpu or cuda")
    if name == "cuda" and dist.launched_by_torchrun():
        return torch.device("cuda", dist.local_rank())
    return torch.device(name)


def parameter_hash(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer, by name: equal hashes mean identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train(
    kind: str,
    config: TrainingConfig,
    data_paths: list[str],
    out_dir: str | Path,
    *,
    method: str | type[TrainingMethod] | None = None,
    device: str | None = None,
    progress: bool = True,
    write_rank_hashes: bool = False,
) -> dict[str, Any]:
    """Train (or resume) the run in ``out_dir``; returns a JSON-able summary.

    ``kind`` is the checkpoint kind; ``method`` defaults to the kind's (``kp_perception.kinds``;
    a class or ``"module:Class"`` may be given, e.g. by tests). ``config`` is the typed
    config (``resolve_run_config`` / ``load_config``). Under torchrun every rank calls
    this; only rank 0 writes. ``write_rank_hashes`` makes every rank write
    ``RUN/rank_<r>_params.sha256`` at the end, to check that DDP replicas agree.
    """
    retain_freed_memory()
    dev = resolve_device(device)
    dist.init_process_group(dev.type)
    try:
        cls = resolve_method(method) if isinstance(method, str) else (method or resolve_method(kind))
        run = _start(kind, config, [str(p) for p in data_paths], Path(out_dir), cls, dev)
        reason = _loop(run, progress)
        return _finish(run, reason, write_rank_hashes)
    finally:
        dist.destroy_process_group()


@dataclass
class _Run:
    """What one training invocation holds; each function below does one part of the loop with it."""

    kind: str
    config: TrainingConfig
    out: Path
    data_paths: list[str]
    device: torch.device
    model: TrainingMethod
    wrapped: torch.nn.Module  # the model, or its DDP wrapper under torchrun
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    scaler: torch.amp.GradScaler
    main_params: list[torch.nn.Parameter]
    val_ds: Dataset | None
    stream: ShardedStream | None = None  # set once the resumed step is known
    loader: DataLoader | None = None
    step: int = 0
    best_metric: float = math.inf
    loss_ema: float | None = None
    elapsed_before: float = 0.0  # training seconds of earlier invocations of this run
    t_start: float = field(default_factory=time.monotonic)  # reset when the loop starts: setup is not training
    writer: Any = None  # TensorBoard, rank 0 only
    image_writer: Any = None
    images_seen: int = 0
    averaged: list[torch.Tensor] | None = None  # train.weight_average: the average of averaged_names' parameters
    averaged_names: list[str] = field(default_factory=list)
    averaged_live: list[torch.nn.Parameter] = field(default_factory=list)

    @property
    def settings(self) -> TrainSettings:
        return self.config.train

    @property
    def rank(self) -> int:
        return dist.rank()

    @property
    def world(self) -> int:
        return dist.world_size()

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def use_amp(self) -> bool:
        return self.settings.amp and self.device.type == "cuda"

    @property
    def best_by(self) -> str:
        return "val_loss" if self.val_ds is not None and len(self.val_ds) > 0 else "train_loss_ema"

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"


def _start(
    kind: str, config: TrainingConfig, data_paths: list[str], out: Path, cls: type[TrainingMethod],
    device: torch.device,
) -> _Run:
    """Build the method, datasets, optimisers and loader; restore them from ``RUN/last.pt`` when resuming."""
    settings = config.train
    resume = _check_resume(kind, config, data_paths, out, cls)
    # Same seed on every rank so initial weights agree (DDP also broadcasts rank 0's).
    _seed_all(settings.seed)
    model = cls(config).to(device)
    if dist.world_size() > 1 and device.type == "cuda":
        # Batch statistics over all GPUs (same state-dict keys, so checkpoints are unchanged).
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_ds, val_ds = cls.build_datasets(config, data_paths)
    if len(train_ds) == 0:
        raise DataError(f"{', '.join(data_paths)}: no training items")
    optimizers = model.configure_optimizers()
    if "main" not in optimizers:
        raise ConfigError(f"{cls.__name__}.configure_optimizers() must return a 'main' optimiser")
    main_params = [p for g in optimizers["main"].param_groups for p in g["params"]]
    scaler = torch.amp.GradScaler(device.type, enabled=settings.amp and device.type == "cuda")
    run = _Run(
        kind=kind, config=config, out=out, data_paths=data_paths, device=device, model=model, wrapped=model,
        optimizers=optimizers, schedulers=model.configure_schedulers(optimizers), scaler=scaler,
        main_params=main_params, val_ds=val_ds,
    )
    if settings.weight_average > 0:
        in_main = {id(p) for p in main_params}
        named = [(n, p) for n, p in model.named_parameters() if id(p) in in_main]
        run.averaged_names = [n for n, _ in named]
        run.averaged_live = [p for _, p in named]
        run.averaged = [p.detach().clone() for _, p in named]
    if resume is not None:
        _restore(run, resume["training"])
    else:
        _seed_all(_item_seed(settings.seed, run.rank))  # per-rank randomness (dropout, warps) after identical init
    run.wrapped = _wrap_ddp(model, main_params, device, settings) if run.world > 1 else model
    run.stream = ShardedStream(len(train_ds), settings.batch_size, settings.seed, run.rank, run.world, start=run.step)
    run.loader = _loader(train_ds, run.stream, settings, device)
    if run.main:
        _open_run_directory(run, resumed=resume is not None)
    return run


def _check_resume(
    kind: str, config: TrainingConfig, data_paths: list[str], out: Path, cls: type[TrainingMethod]
) -> dict | None:
    """``RUN/last.pt`` when the run resumes, after checking the config and data are the run's own."""
    last = out / "last.pt"
    if not last.exists():
        return None
    resume = _load_resume_checkpoint(last, kind)
    bad = incompatible_keys(config_from_saved(kind, resume["config"], str(last), method=cls, warn=False), config)
    if bad:
        raise ConfigError(
            f"{last}: config differs from the run's in {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}; only steps/budget/logging may change on resume (use another --out)"
        )
    saved_paths = resume["training"].get("data_paths")
    resolved = [str(Path(p).resolve()) for p in data_paths]
    if saved_paths is not None and [str(Path(p).resolve()) for p in saved_paths] != resolved:
        raise ConfigError(f"{last}: run was trained on {saved_paths}, not {data_paths}; use another --out")
    return resume


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Method, optimiser, scheduler, scaler and RNG states from a checkpoint's ``training`` entry."""
    try:
        run.model.load_state_dict(state["method"])
        for name, opt in run.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in run.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        if state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
    except (KeyError, RuntimeError, ValueError) as exc:  # e.g. the method's code changed since
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelLoadError(f"{run.last_path}: cannot resume this run ({reason[:300]})") from None
    if run.averaged is not None:
        averaged = state.get("averaged_method")
        if not isinstance(averaged, dict) or any(n not in averaged for n in run.averaged_names):
            raise ModelLoadError(f"{run.last_path}: cannot resume this run (no weight average saved in it)")
        for name, tensor in zip(run.averaged_names, run.averaged, strict=True):
            tensor.copy_(averaged[name])
    run.step, run.best_metric = int(state["step"]), float(state["best_metric"])
    run.loss_ema, run.elapsed_before = state.get("loss_ema"), float(state.get("elapsed_seconds", 0.0))
    rngs = state["rng"]
    if run.rank < len(rngs) and len(rngs) == run.world:
        _set_rng_state(rngs[run.rank])
    else:  # a different world size cannot continue bit-exact; continue deterministically
        _seed_all(_item_seed(run.settings.seed, run.rank, run.step))


def _wrap_ddp(
    model: TrainingMethod, main_params: list[torch.nn.Parameter], device: torch.device, settings: TrainSettings
) -> torch.nn.Module:
    """DDP over the parameters ``optimizers["main"]`` steps.

    Parameters stepped elsewhere (TUSK's prototypes in ``after_main_step``) are the
    method's to sync (``all_reduce_grads``), so DDP must not track them: their backward
    passes outside DDP's forward/backward would corrupt its reducer.
    """
    in_main = {id(p) for p in main_params}
    outside = [n for n, p in model.named_parameters() if id(p) not in in_main]
    outside += [f".{n}" for n in outside if "." not in n]  # DDP spells a root module's own params ".name"
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, outside)
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=settings.find_unused_parameters,
    )


def _loader(train_ds: Dataset, stream: ShardedStream, settings: TrainSettings, device: torch.device) -> DataLoader:
    workers = settings.num_workers
    return DataLoader(
        SeededItems(train_ds),
        batch_sampler=stream,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=settings.prefetch_factor if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(settings.seed),  # iterator creation must not draw from the global RNG
    )


def _open_run_directory(run: _Run, resumed: bool) -> None:
    """Rank 0: clear a killed save's temporary files, write ``config.yaml``, open TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    from kp_perception_training.tensorboard_images import ExampleImageWriter

    run.out.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries([run.last_path, run.best_path, run.out / "config.yaml"])
    if stale:
        log.warning("%s: removed %d temporary file(s) of an interrupted save (%s)", run.out, len(stale),
                    ", ".join(p.name for p in stale))
    dump_config(run.config, run.out / "config.yaml")
    run.writer = SummaryWriter(str(run.out / "tb"), purge_step=run.step if resumed else None)
    run.image_writer = ExampleImageWriter(run.writer, run.out / "images")


def _save(run: _Run, path: Path) -> None:
    """Write a checkpoint of the run as it stands (every rank takes part: RNG states are gathered)."""
    rngs = _gather_objects(_rng_state())
    if not run.main:
        return
    method, encoder, averaged = run.model.state_dict(), run.model.encoder.state_dict(), None
    if run.averaged is not None:
        averaged = method | dict(zip(run.averaged_names, run.averaged, strict=True))
        encoder.update({n[len("encoder."):]: t for n, t in zip(run.averaged_names, run.averaged, strict=True)
                        if n.startswith("encoder.")})
    save_checkpoint(
        path,
        {
            "kind": run.kind,
            "config": run.config.to_dict(),
            "encoder": run.model.encoder_state_for_use(encoder),
            "training": {
                "step": run.step,
                "method": method,
                "averaged_method": averaged,
                "optimizers": {k: o.state_dict() for k, o in run.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in run.schedulers.items()},
                "scaler": run.scaler.state_dict() if run.use_amp else None,
                "rng": rngs,
                "sampler": run.stream.state(run.step),
                "best_metric": run.best_metric,
                "best_by": run.best_by,
                "loss_ema": run.loss_ema,
                "data_paths": run.data_paths,
                "world_size": run.world,
                "elapsed_seconds": run.elapsed_before + (time.monotonic() - run.t_start),
            },
        },
    )


def _step(run: _Run, batch: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """One optimisation step: forward, backward, main step, the method's extra steps, schedulers."""
    settings = run.settings
    run.model.train()
    with training_autocast(settings, run.device):
        loss, logs, extra = run.wrapped(batch)
    if not torch.isfinite(loss.detach()).all():
        raise TrainingDivergedError(
            f"{run.out}: loss became {loss.item()} at step {run.step + 1}; "
            f"{run.last_path.name} keeps the last checkpoint"
        )
    run.model.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if settings.grad_clip is not None:
        run.scaler.unscale_(run.optimizers["main"])
        torch.nn.utils.clip_grad_norm_(run.main_params, settings.grad_clip)
    run.scaler.step(run.optimizers["main"])
    run.scaler.update()
    more = run.model.after_main_step(batch, _float32(extra), run.optimizers)
    for sched in run.schedulers.values():
        sched.step()
    if run.averaged is not None:
        decay = min(settings.weight_average, (1 + run.step) / (10 + run.step))
        get_ema_multi_avg_fn(decay)(run.averaged, [p.detach() for p in run.averaged_live], None)
    run.step += 1
    value = float(loss.detach())
    run.loss_ema = value if run.loss_ema is None else settings.loss_ema * run.loss_ema + (1 - settings.loss_ema) * value
    return value, {**logs, **more}


class _SpeedMeter:
    """Images per second over the steps since the last log line."""

    def __init__(self) -> None:
        self.images, self.since = 0, time.monotonic()

    def add(self, images: int) -> None:
        self.images += images

    def rate(self) -> float:
        now = time.monotonic()
        rate = self.images / max(now - self.since, 1e-9)
        self.images, self.since = 0, now
        return rate


def _log_scalars(run: _Run, value: float, logs: dict[str, float], images_per_second: float) -> None:
    writer = run.writer
    writer.add_scalar("loss/main", value, run.step)
    writer.add_scalar("loss/ema", run.loss_ema, run.step)
    writer.add_scalar("speed/images_per_second", images_per_second, run.step)
    writer.add_scalar("lr/main", run.optimizers["main"].param_groups[0]["lr"], run.step)
    for name, v in logs.items():
        writer.add_scalar(name, float(v), run.step)


def _log_images(run: _Run, batch: dict[str, Any]) -> None:
    with _forked_rng(), torch.no_grad():
        run.model.eval()
        run.model.log_images(run.image_writer, batch, run.step)
        run.model.train()


def _validate_and_keep_best(run: _Run) -> None:
    """Validation loss now; a new lowest one writes ``best.pt``."""
    val_loss = _validate(run.model, run.val_ds, run.settings, run.device, run.rank, run.world, run.use_amp)
    if run.main:
        run.writer.add_scalar("loss/val", val_loss, run.step)
    if val_loss < run.best_metric:
        run.best_metric = val_loss
        _save(run, run.best_path)


def _stop_reason(run: _Run, stop: _StopRequest) -> str | None:
    """"budget", "signal SIGTERM" / "signal SIGINT" (or "... on another rank"), or None to go on; ranks agree."""
    budget = run.settings.max_minutes * 60.0 if run.settings.max_minutes is not None else None
    elapsed = time.monotonic() - run.t_start
    flags = [float(budget is not None and elapsed >= budget), float(stop.signal_name is not None)]
    if run.world > 1:  # every rank stops at the same step
        flags = dist.all_reduce_sum(flags, run.device)
    if flags[0] > 0:
        return "budget"
    if flags[1] > 0:
        return f"signal {stop.signal_name or 'on another rank'}"
    return None


def _checkpoint(run: _Run) -> None:
    """``last.pt`` (and, choosing best by the training-loss EMA, ``best.pt`` when it is lowest)."""
    if run.best_by == "train_loss_ema":
        mean_ema = dist.all_reduce_sum([run.loss_ema], run.device)[0] / run.world  # same on every rank
        if mean_ema < run.best_metric:
            run.best_metric = mean_ema
            _save(run, run.best_path)
    _save(run, run.last_path)


def _loop(run: _Run, progress: bool) -> str:
    """Train until ``train.steps``, the time budget or a signal; returns why it stopped."""
    from tqdm import tqdm

    settings = run.settings
    stop = _StopRequest()
    reason = "done"
    speed = _SpeedMeter()
    bar = tqdm(total=settings.steps, initial=min(run.step, settings.steps), disable=not (run.main and progress),
               unit="step", dynamic_ncols=True, desc=f"train {run.kind}")
    iterator = iter(run.loader)
    run.t_start = time.monotonic()
    try:
        with _stop_on_signals(stop):
            while run.step < settings.steps:
                batch = _to_device(next(iterator), run.device, non_blocking=run.device.type == "cuda")
                value, logs = _step(run, batch)
                images = run.model.images_in_batch(batch) * run.world
                run.images_seen += images
                speed.add(images)
                bar.update(1)
                last_step = run.step == settings.steps
                if run.main and (run.step % settings.log_every == 0 or last_step):
                    rate = speed.rate()
                    bar.set_postfix(loss=f"{value:.4g}", img_s=f"{rate:.1f}")
                    _log_scalars(run, value, logs, rate)
                if run.main and run.step % settings.image_every == 0:
                    _log_images(run, batch)
                if run.best_by == "val_loss" and (run.step % settings.val_every == 0 or last_step):
                    _validate_and_keep_best(run)
                stopped = _stop_reason(run, stop)
                if stopped or run.step % settings.checkpoint_every == 0 or last_step:
                    _checkpoint(run)
                if stopped:
                    reason = stopped
                    break
    finally:
        bar.close()
        del iterator
        if run.writer is not None:
            run.writer.flush()
            run.writer.close()
    return reason


def _finish(run: _Run, reason: str, write_rank_hashes: bool) -> dict[str, Any]:
    """Make every replica hold rank 0's buffers, write rank hashes if asked, and summarise."""
    if run.world > 1:
        # DDP broadcasts rank 0's buffers (BatchNorm statistics) before every forward; do it once more
        # so every replica ends holding exactly what rank 0 saved.
        for buffer in run.model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    if write_rank_hashes:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / f"rank_{run.rank}_params.sha256").write_text(parameter_hash(run.model) + "\n")
    dist.barrier()
    elapsed = time.monotonic() - run.t_start
    return {
        "kind": run.kind,
        "step": run.step,
        "steps": run.settings.steps,
        "stopped": reason,
        "last": str(run.last_path),
        "best": str(run.best_path) if run.best_path.exists() else None,
        "best_by": run.best_by,
        "best_metric": run.best_metric if math.isfinite(run.best_metric) else None,
        "loss_ema": run.loss_ema,
        "images_per_second": run.images_seen / elapsed if elapsed > 0 else 0.0,
        "elapsed_seconds": elapsed,
        "world_size": run.world,
        "rank": run.rank,
        "device": str(run.device),
    }


def _gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list without torchrun)."""
    if not dist.is_initialized() or dist.world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _validate(
    model: TrainingMethod, val_ds: Dataset, settings, device: torch.device, rank: int, world: int, use_amp: bool
) -> float:
    """Mean main loss over the first ``val_batches`` batches of this rank's val shard, averaged over ranks."""
    indices = list(range(rank, len(val_ds), world))[: settings.val_batches * settings.batch_size]
    keys = [(i, _item_seed(settings.seed, 0xFA1, i)) for i in indices]
    batches = [keys[i : i + settings.batch_size] for i in range(0, len(keys), settings.batch_size)]
    loader = DataLoader(SeededItems(val_ds), batch_sampler=batches, num_workers=0)
    total, count = 0.0, 0.0
    with _forked_rng(), torch.no_grad():
        _seed_all(_item_seed(settings.seed, 0xFA1))  # the same random warps etc. at every validation
        model.eval()
        for batch in loader:
            batch = _to_device(batch, device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss, _, _ = model(batch)
            n = model.images_in_batch(batch) or 1
            total += float(loss) * n
            count += n
        model.train()
    total, count = dist.all_reduce_sum([total, count], device)
    return total / count if count else math.inf


def summary_line(summary: dict[str, Any]) -> str:
    """The one JSON line ``kp-perception train`` prints at the end."""
    return json.dumps(summary, sort_keys=True)
