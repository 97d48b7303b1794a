"""The trainer's mechanics, specified on a tiny real method (a denoising conv autoencoder).

The method has every source of randomness the real ones have: random noise
drawn inside the dataset's ``__getitem__`` (numpy and torch), dropout in the
forward pass, and a val split; so exact resume, worker seeding and DDP
replicas are really exercised.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from kp_perception.checkpoint import load_checkpoint, save_checkpoint
from kp_perception.errors import ConfigError, DataError, ModelLoadError
from kp_perception_training.config import Optim, TrainingConfig, TrainSettings, build_config, load_config
from kp_perception_training.distributed import all_reduce_grads
from kp_perception_training.methods import TrainingMethod, resolve_method
from kp_perception_training.trainer import ShardedStream, parameter_hash, resolve_run_config, train

REPO = Path(__file__).resolve().parent.parent
TINY = "test.test_trainer:TinyMethod"


class NoisyImages(Dataset):
    """Fixed random 3×8×8 images; each item adds fresh noise (numpy + torch RNG) — randomness the trainer must seed."""

    def __init__(self, n: int, seed: int) -> None:
        self.clean = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.clean)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        noise = 0.1 * torch.randn(3, 8, 8) + 0.05 * float(np.random.rand())
        return {"clean": self.clean[i], "noisy": self.clean[i] + noise, "index": torch.tensor(i)}


@dataclass(frozen=True)
class TinyModel:
    width: int = 8


@dataclass(frozen=True)
class TinyData:
    items: int = 20
    seed: int = 3
    val: bool = True


@dataclass(frozen=True)
class TinyConfig(TrainingConfig):
    model: TinyModel = field(default_factory=TinyModel)
    data: TinyData = field(default_factory=TinyData)
    optim: Optim = field(default_factory=lambda: Optim(lr=3e-3))
    train: TrainSettings = field(default_factory=TrainSettings)


class TinyMethod(TrainingMethod):
    kind = "keynet"  # a checkpoint kind is required; this test method borrows one
    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        width = config.model.width
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.decoder = nn.Sequential(nn.Dropout(0.2), nn.Conv2d(width, 3, 3, padding=1))
        # Stepped outside the main optimiser on detached outputs, as TUSK's prototypes are.
        self.centre = nn.Parameter(torch.zeros(width))

    @classmethod
    def build_datasets(cls, config, data_paths):
        val = NoisyImages(8, seed=99) if config.data.val else None
        return NoisyImages(config.data.items, seed=config.data.seed), val

    def configure_optimizers(self):
        main = [p for n, p in self.named_parameters() if n != "centre"]
        return {"main": torch.optim.Adam(main, lr=self.config.optim.lr),
                "centre": torch.optim.SGD([self.centre], lr=0.5)}

    def forward(self, batch):
        codes = self.encoder(batch["noisy"])
        out = self.decoder(codes)
        loss = torch.mean((out - batch["clean"]) ** 2)
        return loss, {"loss/mse": float(loss.detach())}, codes.detach().mean(dim=(0, 2, 3))

    def after_main_step(self, batch, extra, optimizers):
        opt = optimizers["centre"]
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            gap = torch.sum((self.centre - extra) ** 2)
            gap.backward()
            all_reduce_grads([self.centre])
            opt.step()
        return {"loss/centre": float(gap.detach())}

    def log_images(self, writer, batch, step):
        writer.add_images("recon", self.decoder(self.encoder(batch["noisy"][:2])).clamp(0, 1), step)


def tiny_config(data: dict | None = None, **train) -> TinyConfig:
    settings = {"steps": 12, "batch_size": 4, "num_workers": 0, "log_every": 2, "image_every": 5,
                "checkpoint_every": 100, "val_every": 4, "val_batches": 1, **train}
    return build_config(TinyConfig, {"data": data or {}, "train": settings})


def run(out: Path, config: dict, **kw) -> dict:
    return train("keynet", config, ["unused"], out, method=TINY, device="cpu", progress=False, **kw)


def full_state(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)["training"]
    tensors = dict(state["method"])
    for name, opt in state["optimizers"].items():
        for pid, s in opt["state"].items():
            for key, value in s.items():
                tensors[f"opt.{name}.{pid}.{key}"] = torch.as_tensor(value)
    return tensors


def test_resume_is_bit_exact_across_stop_and_worker_count(tmp_path):
    straight = run(tmp_path / "straight", tiny_config())
    assert straight["step"] == 12 and straight["stopped"] == "done"

    first = run(tmp_path / "resumed", tiny_config(steps=5))
    assert first["step"] == 5
    # The second invocation resumes from last.pt; a loader worker process must not change the data.
    config = resolve_run_config("keynet", tmp_path / "resumed", None, ["train.steps=12", "train.num_workers=1"],
                                method=TINY)
    second = run(tmp_path / "resumed", config)
    assert second["step"] == 12

    a, b = full_state(tmp_path / "straight" / "last.pt"), full_state(tmp_path / "resumed" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Both differ from a run that did not resume with the same RNG (guards against a vacuous comparison).
    other = run(tmp_path / "other", tiny_config(seed=1))
    assert not torch.equal(full_state(Path(other["last"]))["encoder.0.weight"], a["encoder.0.weight"])


def test_loss_falls_and_run_directory_is_complete(tmp_path):
    out = tmp_path / "run"
    summary = run(out, tiny_config(steps=40, val_every=10))
    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "config.yaml").is_file() and events
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert build_config(TinyConfig, saved) == tiny_config(steps=40, val_every=10)  # the resolved config round-trips

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    losses = [e.value for e in acc.Scalars("loss/main")]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    assert "recon" in acc.Tags()["images"]
    pngs = sorted((out / "images" / "recon").glob("*.png"))  # the same examples as PNG files
    assert [p.stem for p in pngs] == [f"{s:08d}" for s in range(5, 41, 5)]
    import cv2

    assert cv2.imread(str(pngs[-1])).shape == (8, 2 * (8 + 2), 3)
    assert "speed/images_per_second" in acc.Tags()["scalars"]

    best = load_checkpoint(out / "best.pt")
    vals = {e.step: e.value for e in acc.Scalars("loss/val")}
    assert summary["best_by"] == "val_loss"
    assert best["training"]["step"] == min(vals, key=vals.get)
    assert best["training"]["best_metric"] == pytest.approx(min(vals.values()))
    assert set(best["encoder"]) == {"0.weight", "0.bias"}  # the robot-side encoder only


def test_best_follows_train_loss_ema_without_val_split(tmp_path):
    config = tiny_config(data={"val": False}, steps=8, checkpoint_every=4)
    summary = run(tmp_path / "run", config)
    assert summary["best_by"] == "train_loss_ema"
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["training"]["best_metric"] == pytest.approx(summary["best_metric"])


def test_weight_average_is_what_the_checkpoint_exports_and_resumes_bit_exact(tmp_path):
    straight = run(tmp_path / "straight", tiny_config(weight_average=0.9))
    ckpt = load_checkpoint(Path(straight["last"]))
    live, averaged = ckpt["training"]["method"], ckpt["training"]["averaged_method"]
    # The exported encoder is the average, not the live weights; resume keeps both.
    assert torch.equal(ckpt["encoder"]["0.weight"], averaged["encoder.0.weight"])
    assert not torch.allclose(averaged["encoder.0.weight"], live["encoder.0.weight"])
    # Parameters outside the main optimiser (TUSK's prototypes) are not averaged.
    assert torch.equal(averaged["centre"], live["centre"])

    run(tmp_path / "resumed", tiny_config(weight_average=0.9, steps=5))
    config = resolve_run_config("keynet", tmp_path / "resumed", None, ["train.steps=12"], method=TINY)
    resumed = load_checkpoint(Path(run(tmp_path / "resumed", config)["last"]))["training"]["averaged_method"]
    for key in averaged:
        assert torch.equal(averaged[key], resumed[key]), key


def test_weight_average_steps_part_of_the_way_towards_the_live_weights(tmp_path):
    """Each step moves the average straight towards the new live weights, by a fraction that shrinks (warm-up)."""
    out = tmp_path / "run"
    fractions, previous = [], None
    for step in range(20, 27):
        config = resolve_run_config("keynet", out, None, [f"train.steps={step}"], method=TINY) if previous is not None \
            else tiny_config(weight_average=0.95, steps=step)
        state = load_checkpoint(Path(run(out, config)["last"]))["training"]
        live, averaged = state["method"]["encoder.0.weight"], state["averaged_method"]["encoder.0.weight"]
        if previous is not None:
            moved, towards = (averaged - previous).flatten(), (live - previous).flatten()
            assert torch.nn.functional.cosine_similarity(moved, towards, dim=0) > 0.9999
            fractions.append(float(moved.norm() / towards.norm()))
        previous = averaged
    assert all(0.0 < f < 1.0 for f in fractions)
    assert fractions == sorted(fractions, reverse=True)


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_weight_average_outside_zero_one_is_a_config_error(value):
    with pytest.raises(ConfigError, match="weight_average"):
        tiny_config(weight_average=value)


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path):
    summary = run(tmp_path / "run", tiny_config(steps=1000, max_minutes=0.0))
    assert summary["stopped"] == "budget" and summary["step"] == 1
    assert load_checkpoint(tmp_path / "run" / "last.pt")["training"]["step"] == 1


def test_rerun_with_changed_config_is_refused_naming_the_key(tmp_path):
    out = tmp_path / "run"
    run(out, tiny_config(steps=2))
    with pytest.raises(ConfigError, match="train.batch_size"):
        run(out, tiny_config(steps=4, batch_size=8))
    with pytest.raises(ConfigError, match="holds a 'keynet' run, not 'pyramids'"):
        resolve_run_config("pyramids", out, None, [])


@pytest.mark.parametrize("content", ["random", "foreign", "not_training"])
def test_corrupt_or_foreign_last_checkpoint_is_one_clear_error(tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    if content == "random":
        (out / "last.pt").write_bytes(np.random.default_rng(0).bytes(4096))
        expected, error = "not a readable kp_perception checkpoint", ModelLoadError
    elif content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, out / "last.pt")
        expected, error = "not a kp_perception checkpoint", ModelLoadError
    else:  # an exported-only checkpoint has no training state to continue
        save_checkpoint(out / "last.pt", {"kind": "keynet", "config": tiny_config().to_dict(), "encoder": {}})
        expected, error = "no training state", ConfigError
    with pytest.raises(error, match=expected) as info:
        run(out, tiny_config())
    assert str(out / "last.pt") in str(info.value) and "\n" not in str(info.value)


def test_resume_into_a_changed_method_is_one_clear_error(tmp_path):
    out = tmp_path / "run"
    run(out, tiny_config(steps=2))
    ckpt = load_checkpoint(out / "last.pt")
    del ckpt["training"]["method"]["decoder.1.weight"]  # as if the decoder's code had changed
    save_checkpoint(out / "last.pt", ckpt)
    with pytest.raises(ModelLoadError, match="cannot resume this run") as info:
        run(out, tiny_config(steps=4))
    assert "\n" not in str(info.value) and "decoder.1.weight" in str(info.value)


def test_empty_dataset_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no training items"):
        run(tmp_path / "run", tiny_config(data={"items": 0}))


def test_sharded_stream_splits_each_epoch_between_ranks_and_resumes_by_step():
    n, bs = 10, 3
    ranks = [ShardedStream(n, bs, seed=7, rank=r, world_size=2) for r in range(2)]
    per_rank = 5  # ceil(10 / 2)
    seen = [[i for b in range(per_rank) for i, _ in s.batch(b)][:per_rank] for s in ranks]
    assert sorted(seen[0] + seen[1]) == list(range(n))  # epoch 0: disjoint shards covering the data
    later = ShardedStream(n, bs, seed=7, rank=1, world_size=2, start=4)
    assert next(iter(later)) == ranks[1].batch(4)  # starting at a step reproduces that step's batch
    assert ranks[0].batch(0) != ShardedStream(n, bs, seed=8).batch(0)


def test_config_overrides_are_typed_and_unknown_keys_are_errors():
    config = build_config(TinyConfig, {}, overrides=["optim.lr=1e-2", "train.grad_clip=1.0", "model.width=4"])
    assert config.optim.lr == 0.01 and config.train.grad_clip == 1.0 and config.model.width == 4
    with pytest.raises(ConfigError, match="'train.step'"):
        build_config(TinyConfig, {}, overrides=["train.step=5"])
    with pytest.raises(ConfigError, match="train.batch_size must be int, got 'big'"):
        build_config(TinyConfig, {}, overrides=["train.batch_size=big"])


def test_config_file_base_chain_and_unknown_train_key(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {width: 8}\ntrain: {steps: 10, batch_size: 2}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmodel: {width: 4}\n")
    config = load_config("keynet", tmp_path / "b.yaml", ["train.seed=5"], method=TinyMethod)
    assert config.model.width == 4
    assert (config.train.steps, config.train.batch_size, config.train.seed) == (10, 2, 5)
    (tmp_path / "c.yaml").write_text("train: {stpes: 10}\n")
    with pytest.raises(ConfigError, match="train.stpes"):
        load_config("keynet", tmp_path / "c.yaml", method=TinyMethod)


def test_method_registry_rejects_unknown_kind():
    with pytest.raises(ConfigError, match="unknown method kind 'yolo'"):
        resolve_method("yolo")
    assert resolve_method(TINY) is TinyMethod


SCRIPT = """
import sys, json, os
from pathlib import Path
sys.path.insert(0, {repo!r})
from test.test_trainer import tiny_config
from kp_perception_training.trainer import train
config = tiny_config(**json.loads(sys.argv[2]))
summary = json.dumps(train("keynet", config, ["unused"], sys.argv[1], method="test.test_trainer:TinyMethod",
                           device="cpu", progress=False, write_rank_hashes=True))
# Ranks share torchrun's stdout, where their lines can interleave; each rank's summary goes to its own file.
Path(sys.argv[1], f"summary_rank_{{os.environ.get('RANK', '0')}}.json").write_text(summary)
print(summary)
"""


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "train_tiny.py"
    path.write_text(SCRIPT.format(repo=str(REPO)))
    return path


def run_group(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run in its own process group, killed as a whole on timeout (torchrun leaves no orphans)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kwargs)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.mark.timeout(180)
def test_torchrun_two_gloo_ranks_hold_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(_script(tmp_path)), str(out)]
    # A zero budget stops both ranks together after one step (checkpoint written), then the run resumes to 6.
    first = run_group([*cmd, '{"steps": 6, "max_minutes": 0.0}'], timeout=80, env=_env(), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    stops = [json.loads((out / f"summary_rank_{r}.json").read_text()) for r in range(2)]
    assert [(d["rank"], d["step"], d["stopped"]) for d in sorted(stops, key=lambda d: d["rank"])] == [
        (0, 1, "budget"), (1, 1, "budget")]
    proc = run_group([*cmd, '{"steps": 6, "num_workers": 1}'], timeout=80, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hashes = [(out / f"rank_{r}_params.sha256").read_text().strip() for r in range(2)]
    assert hashes[0] == hashes[1]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["training"]["world_size"] == 2 and ckpt["training"]["step"] == 6
    assert len(ckpt["training"]["rng"]) == 2  # both ranks' RNG states, for exact resume
    model = TinyMethod(build_config(TinyConfig, ckpt["config"]))
    model.load_state_dict(ckpt["training"]["method"])
    assert parameter_hash(model) == hashes[0]  # rank 0 wrote what every rank holds
    # The replicas trained on different data: a one-process run of the same steps ends elsewhere.
    single = run(tmp_path / "single", tiny_config(steps=6))
    assert load_checkpoint(single["last"])["training"]["method"]["encoder.0.weight"].ne(
        ckpt["training"]["method"]["encoder.0.weight"]).any()


def sigterm_once_training(cmd: list[str], out: Path, env: dict[str, str], cwd: Path | None = None,
                          wait: float = 90) -> tuple[subprocess.Popen, str, str]:
    """Start ``cmd``, send SIGTERM a second after its TensorBoard log appears in ``out``; (process, stdout, stderr)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + wait
        while not list((out / "tb").glob("events.*")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(1.0)  # a few steps in
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, stdout, stderr


@pytest.mark.timeout(120)
def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(_script(tmp_path)), str(out),
           '{"steps": 1000000, "checkpoint_every": 1000000, "log_every": 1}']
    proc, stdout, stderr = sigterm_once_training(cmd, out, _env(), cwd=tmp_path)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["stopped"] == "signal SIGTERM" and summary["step"] >= 1
    assert load_checkpoint(out / "last.pt")["training"]["step"] == summary["step"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision runs only on CUDA; no GPU on this machine")
def test_mixed_precision_on_cuda_trains_and_saves_the_scaler(tmp_path):
    summary = train("keynet", tiny_config(steps=4), ["unused"], tmp_path / "run", method=TINY, device="cuda",
                    progress=False)
    assert summary["device"].startswith("cuda") and summary["step"] == 4
    scaler = load_checkpoint(tmp_path / "run" / "last.pt")["training"]["scaler"]
    assert scaler is not None and scaler["scale"] > 0


class Bf16ProbeMethod(TinyMethod):
    """TinyMethod that records the dtype its encoder computed in."""

    dtypes: list[torch.dtype] = []

    def forward(self, batch):
        loss, logs, extra = super().forward(batch)
        Bf16ProbeMethod.dtypes.append(self.encoder(batch["noisy"][:1]).dtype)
        return loss, logs, extra


def test_cpu_bf16_computes_in_bfloat16_learns_and_keeps_float32_weights(tmp_path):
    Bf16ProbeMethod.dtypes.clear()
    out = tmp_path / "run"
    train("keynet", tiny_config(steps=40, val_every=10, cpu_bf16=True), ["unused"], out,
          method="test.test_trainer:Bf16ProbeMethod", device="cpu", progress=False)
    # Every training step computes in bfloat16; validation stays float32, so its losses compare across runs.
    assert Bf16ProbeMethod.dtypes.count(torch.bfloat16) == 40
    state = load_checkpoint(out / "last.pt")
    assert all(v.dtype == torch.float32 for v in state["encoder"].values())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    losses = [e.value for e in acc.Scalars("loss/main")]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
