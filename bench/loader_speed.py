"""Is the data pipeline the bottleneck? A training step fed by the real loader vs the same step on preloaded tensors.

The real loader is the trainer's: ``kp_perception_training.trainer.ShardedStream`` batches over
``SeededItems(FramePairDataset)`` on the on-disk frame cache, in a DataLoader with
``--workers`` processes. The preloaded side cycles batches already in memory. Both
run the same Keypoint Pyramids step (forward, backward, Adam), alternating in
rounds so machine load hits both alike. Goal: loader / preloaded ≤ 1.1.
Reports images/s for both; figures on a shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kp_perception.kinds import PYRAMID_KINDS
from kp_perception_bench._outputs import work_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="*", help="training data (default: simulate 4 tabletop episodes into --work)")
    parser.add_argument("--work", type=Path, default=work_dir("bench_loader"))
    parser.add_argument("--kind", default="pyramids", choices=PYRAMID_KINDS)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="steps per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="DataLoader workers to measure")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    parser.add_argument("--paper-model", action="store_true", help="paper model sizes instead of the CPU preset")


def _data(args: argparse.Namespace) -> list[str]:
    if args.data:
        return list(args.data)
    out = Path(args.work) / f"sim_{args.size}"
    if not (out / "annotations.csv").is_file():
        cmd = [sys.executable, "-m", "kp_perception.cli.main", "sim", "tabletop", "--out", str(out), "--episodes", "4",
               "--frames", "30", "--size", str(args.size), "--seed", "7", "--overwrite"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return [str(out)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from kp_perception_bench.pyramids_quality import paper_finest_stride, preset_for
    from kp_perception_training.config import load_config
    from kp_perception_training.methods import resolve_method
    from kp_perception_training.trainer import SeededItems, ShardedStream

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("KP_PERCEPTION_CACHE", str(Path(args.work) / "cache"))
    overrides = [f"data.image_size={args.size}", f"train.batch_size={args.batch_size}",
                 f"model.finest_stride={paper_finest_stride(args.size)}"]  # the quality benchmark's step
    if not args.paper_model:
        overrides += preset_for(args.kind)
    config = load_config(args.kind, overrides=overrides)
    cls = resolve_method(args.kind)
    train_ds, _ = cls.build_datasets(config, _data(args))
    torch.manual_seed(0)
    method = cls(config)
    opt = torch.optim.Adam(method.parameters(), lr=1e-4)

    def step(batch: dict) -> None:
        loss, _, _ = method(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def loader(workers: int):
        stream = ShardedStream(len(train_ds), args.batch_size, seed=0)
        return DataLoader(SeededItems(train_ds), batch_sampler=stream, num_workers=workers,
                          persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)

    preloaded = [{k: v for k, v in b.items() if isinstance(v, torch.Tensor)}
                 for b in itertools.islice(iter(loader(0)), 4)]
    for b in preloaded[:2]:  # warm-up
        step(b)
    figures: dict[str, Any] = {"kind": args.kind, "size": args.size, "batch_size": args.batch_size,
                               "threads": torch.get_num_threads(), "dataset_pairs": len(train_ds), "workers": {}}
    for workers in args.workers:
        it = iter(loader(workers))
        next(it)  # start workers outside the timing
        t_pre = t_real = 0.0
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(preloaded[i % len(preloaded)])
            t1 = time.perf_counter()
            for _ in range(args.steps):
                batch = next(it)
                step({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
            t2 = time.perf_counter()
            t_pre += t1 - t0
            t_real += t2 - t1
        images = args.rounds * args.steps * args.batch_size
        figures["workers"][str(workers)] = {
            "ratio_loader_over_preloaded": t_real / t_pre,
            "meets_1_1": bool(t_real / t_pre <= 1.1),
            "images_per_second_loader": images / t_real,
            "images_per_second_preloaded": images / t_pre,
            "seconds_per_step_loader": t_real / (args.rounds * args.steps),
        }
        del it
    figures["note"] = "shared CPU: absolute figures are noisy; the ratio is measured side by side in alternating rounds"
    return figures


if __name__ == "__main__":
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    print(json.dumps(run(parser.parse_args()), indent=2))
