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
import math
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

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
    config (``resolve_run_config`` / ``load_config``). Under torchrun
    every rank calls this; only rank 0 writes. ``write_rank_hashes`` makes
    every rank write ``RUN/rank_<r>_params.sha256`` at the end, to check that
    DDP replicas agree.
    """
    retain_freed_memory()
    dev = resolve_device(device)
    dist.init_process_group(dev.type)
    try:
        return _train(kind, config, data_paths, Path(out_dir), method, dev, progress, write_rank_hashes)
    finally:
        dist.destroy_process_group()


def _train(
    kind: str,
    config: TrainingConfig,
    data_paths: list[str],
    out: Path,
    method_spec: str | type[TrainingMethod] | None,
    device: torch.device,
    progress: bool,
    write_rank_hashes: bool,
) -> dict[str, Any]:
    settings = config.train
    rank, world = dist.rank(), dist.world_size()
    main = rank == 0
    data_paths = [str(p) for p in data_paths]
    last_path, best_path = out / "last.pt", out / "best.pt"
    cls = resolve_method(method_spec) if isinstance(method_spec, str) else (method_spec or resolve_method(kind))

    resume = _load_resume_checkpoint(last_path, kind) if last_path.exists() else None
    if resume is not None:
        bad = incompatible_keys(config_from_saved(kind, resume["config"], str(last_path), method=cls, warn=False), config)
        if bad:
            raise ConfigError(
                f"{last_path}: config differs from the run's in {', '.join(bad[:5])}"
                f"{' ...' if len(bad) > 5 else ''}; only steps/budget/logging may change on resume (use another --out)"
            )
        saved_paths = resume["training"].get("data_paths")
        resolved = [str(Path(p).resolve()) for p in data_paths]
        if saved_paths is not None and [str(Path(p).resolve()) for p in saved_paths] != resolved:
            raise ConfigError(f"{last_path}: run was trained on {saved_paths}, not {data_paths}; use another --out")

    # Same seed on every rank so initial weights agree (DDP also broadcasts rank 0's).
    _seed_all(settings.seed)
    model = cls(config).to(device)
    if world > 1 and device.type == "cuda":
        # Batch statistics over all GPUs (same state-dict keys, so checkpoints are unchanged).
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_ds, val_ds = cls.build_datasets(config, data_paths)
    if len(train_ds) == 0:
        raise DataError(f"{', '.join(data_paths)}: no training items")
    optimizers = model.configure_optimizers()
    if "main" not in optimizers:
        raise ConfigError(f"{cls.__name__}.configure_optimizers() must return a 'main' optimiser")
    schedulers = model.configure_schedulers(optimizers)
    main_params = [p for g in optimizers["main"].param_groups for p in g["params"]]
    use_amp = settings.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)

    step, best_metric, loss_ema, elapsed_before = 0, math.inf, None, 0.0
    if resume is not None:
        state = resume["training"]
        try:
            model.load_state_dict(state["method"])
            for name, opt in optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
            for name, sched in schedulers.items():
                sched.load_state_dict(state["schedulers"][name])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:  # e.g. the method's code changed since
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ModelLoadError(f"{last_path}: cannot resume this run ({reason[:300]})") from None
        step, best_metric = int(state["step"]), float(state["best_metric"])
        loss_ema, elapsed_before = state.get("loss_ema"), float(state.get("elapsed_seconds", 0.0))
        rngs = state["rng"]
        if rank < len(rngs) and len(rngs) == world:
            _set_rng_state(rngs[rank])
        else:  # a different world size cannot continue bit-exact; continue deterministically
            _seed_all(_item_seed(settings.seed, rank, step))
    else:
        _seed_all(_item_seed(settings.seed, rank))  # per-rank randomness (dropout, warps) after identical init

    wrapped: torch.nn.Module = model
    if world > 1:
        # DDP syncs the gradients of what optimizers["main"] steps; parameters stepped elsewhere (TUSK's
        # prototypes in after_main_step) are the method's to sync (all_reduce_grads), so DDP must not
        # track them: their backward passes outside DDP's forward/backward would corrupt its reducer.
        in_main = {id(p) for p in main_params}
        outside = [n for n, p in model.named_parameters() if id(p) not in in_main]
        outside += [f".{n}" for n in outside if "." not in n]  # DDP spells a root module's own params ".name"
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, outside)
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=settings.find_unused_parameters,
        )

    stream = ShardedStream(len(train_ds), settings.batch_size, settings.seed, rank, world, start=step)
    workers = settings.num_workers
    loader = DataLoader(
        SeededItems(train_ds),
        batch_sampler=stream,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=settings.prefetch_factor if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(settings.seed),  # iterator creation must not draw from the global RNG
    )

    writer = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(config, out / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        from kp_perception_training.tensorboard_images import ExampleImageWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=step if resume is not None else None)
        image_writer = ExampleImageWriter(writer, out / "images")

    best_by = "val_loss" if val_ds is not None and len(val_ds) > 0 else "train_loss_ema"

    def checkpoint(path: Path) -> None:
        rngs = _gather_objects(_rng_state())
        if not main:
            return
        save_checkpoint(
            path,
            {
                "kind": kind,
                "config": config.to_dict(),
                "encoder": model.encoder.state_dict(),
                "training": {
                    "step": step,
                    "method": model.state_dict(),
                    "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                    "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                    "scaler": scaler.state_dict() if use_amp else None,
                    "rng": rngs,
                    "sampler": stream.state(step),
                    "best_metric": best_metric,
                    "best_by": best_by,
                    "loss_ema": loss_ema,
                    "data_paths": data_paths,
                    "world_size": world,
                    "elapsed_seconds": elapsed_before + (time.monotonic() - t_start),
                },
            },
        )

    stop = _StopRequest()
    reason = "done"
    images_seen, window_images, window_start = 0, 0, time.monotonic()
    images_per_second = 0.0
    t_start = time.monotonic()
    budget = settings.max_minutes * 60.0 if settings.max_minutes is not None else None
    from tqdm import tqdm

    bar = tqdm(total=settings.steps, initial=min(step, settings.steps), disable=not (main and progress),
               unit="step", dynamic_ncols=True, desc=f"train {kind}")
    iterator = iter(loader)
    try:
        with _stop_on_signals(stop):
            while step < settings.steps:
                batch = _to_device(next(iterator), device, non_blocking=device.type == "cuda")
                model.train()
                with training_autocast(settings, device):
                    loss, logs, extra = wrapped(batch)
                if not torch.isfinite(loss.detach()).all():
                    raise TrainingDivergedError(
                        f"{out}: loss became {loss.item()} at step {step + 1}; {last_path.name} keeps the last checkpoint"
                    )
                model.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if settings.grad_clip is not None:
                    scaler.unscale_(optimizers["main"])
                    torch.nn.utils.clip_grad_norm_(main_params, settings.grad_clip)
                scaler.step(optimizers["main"])
                scaler.update()
                more = model.after_main_step(batch, _float32(extra), optimizers)
                for sched in schedulers.values():
                    sched.step()
                step += 1

                value = float(loss.detach())
                loss_ema = value if loss_ema is None else settings.loss_ema * loss_ema + (1 - settings.loss_ema) * value
                n_images = model.images_in_batch(batch) * world
                images_seen += n_images
                window_images += n_images
                bar.update(1)

                if main and (step % settings.log_every == 0 or step == settings.steps):
                    now = time.monotonic()
                    images_per_second = window_images / max(now - window_start, 1e-9)
                    window_images, window_start = 0, now
                    bar.set_postfix(loss=f"{value:.4g}", img_s=f"{images_per_second:.1f}")
                    writer.add_scalar("loss/main", value, step)
                    writer.add_scalar("loss/ema", loss_ema, step)
                    writer.add_scalar("speed/images_per_second", images_per_second, step)
                    writer.add_scalar("lr/main", optimizers["main"].param_groups[0]["lr"], step)
                    for name, v in {**logs, **more}.items():
                        writer.add_scalar(name, float(v), step)

                if main and step % settings.image_every == 0:
                    with _forked_rng(), torch.no_grad():
                        model.eval()
                        model.log_images(image_writer, batch, step)
                        model.train()

                if best_by == "val_loss" and (step % settings.val_every == 0 or step == settings.steps):
                    val_loss = _validate(model, val_ds, settings, device, rank, world, use_amp)
                    if main:
                        writer.add_scalar("loss/val", val_loss, step)
                    if val_loss < best_metric:
                        best_metric = val_loss
                        checkpoint(best_path)

                elapsed = time.monotonic() - t_start
                flags = [float(budget is not None and elapsed >= budget), float(stop.signal_name is not None)]
                if world > 1:  # every rank stops at the same step
                    flags = dist.all_reduce_sum(flags, device)
                over_budget, signalled = flags[0] > 0, flags[1] > 0
                wants_stop = over_budget or signalled
                if wants_stop:
                    reason = "budget" if over_budget else f"signal {stop.signal_name or 'on another rank'}"
                if wants_stop or step % settings.checkpoint_every == 0 or step == settings.steps:
                    if best_by == "train_loss_ema":
                        mean_ema = dist.all_reduce_sum([loss_ema], device)[0] / world  # same on every rank
                        if mean_ema < best_metric:
                            best_metric = mean_ema
                            checkpoint(best_path)
                    checkpoint(last_path)
                if wants_stop:
                    break
    finally:
        bar.close()
        del iterator
        if writer is not None:
            writer.flush()
            writer.close()

    if world > 1:
        # DDP broadcasts rank 0's buffers (BatchNorm statistics) before every forward; do it once more
        # so every replica ends holding exactly what rank 0 saved.
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    if write_rank_hashes:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank_{rank}_params.sha256").write_text(parameter_hash(model) + "\n")
    dist.barrier()
    elapsed = time.monotonic() - t_start
    return {
        "kind": kind,
        "step": step,
        "steps": settings.steps,
        "stopped": reason,
        "last": str(last_path),
        "best": str(best_path) if best_path.exists() else None,
        "best_by": best_by,
        "best_metric": best_metric if math.isfinite(best_metric) else None,
        "loss_ema": loss_ema,
        "images_per_second": images_seen / elapsed if elapsed > 0 else 0.0,
        "elapsed_seconds": elapsed,
        "world_size": world,
        "rank": rank,
        "device": str(device),
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
