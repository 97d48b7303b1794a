"""TUSK training throughput: our schedule vs the reference schedule's waste, side by side.

Both sides run the SAME model (TuskMethod, Tetrominoes preset: 114 prototypes,
8 prototype steps) at the SAME image size (112 px, the reference's) and batch
(8 TPS pairs), on the same random batches, alternating over ``--repeats`` rounds:

- ours: one main step (encoder + decoder + losses, Adam), then 8 prototype
  steps on the sliced-Wasserstein loss using the main step's descriptors,
  detached (``TuskMethod.after_main_step``);
- reference schedule: the same main step, then 8 prototype steps that each
  re-run the encoder forward on the pair and back-propagate the
  sliced-Wasserstein loss through it (the official code's waste: those
  encoder gradients are thrown away; only the prototypes step).

Reported: images/s (an "image" = one batch item, i.e. one TPS pair, as the
reference counts its batch) for each, their ratio, CPU-seconds per step, and
our images/s against the official code's anchor measured on this machine
(0.6 images/s at 112 px, batch 8). Timings on a shared CPU are noisy: the
ratio is measured side by side, the absolute figures are not.

    python -m kp_perception_bench.tusk_throughput [--image-size 112 --batch 8 --steps 3 --repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

REFERENCE_ANCHOR_IMAGES_PER_S = 0.6  # official TUSK code, Tetrominoes config, this 2-core CPU


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=112, help="square image size (reference: 112)")
    parser.add_argument("--batch", type=int, default=8, help="TPS pairs per batch (reference bench: 8)")
    parser.add_argument("--prototype-steps", type=int, default=8, help="prototype steps per batch (reference: 8)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per side per round")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("preset", "fp32", "bf16"), default="preset",
                        help="forward passes of BOTH schedules in float32 or under bfloat16 autocast "
                             "(train.cpu_bf16); 'preset' follows the Tetrominoes preset")


def _build(args: argparse.Namespace):
    import torch

    from kp_perception_training.config import load_config
    from kp_perception_training.tusk.method import TuskMethod

    overrides = [
        f"data.image_size={args.image_size}",
        f"prototypes.steps={args.prototype_steps}",
        # The NMS window scales with the image (27 px at 112 px in the reference).
        f"model.nms_window={max(3, (27 * args.image_size // 112) | 1)}",
        # So does the sprite (21 px at the preset's 35 px: 67 px at 112 px).
        f"decoder.rgba.sprite_px={max(3, (21 * args.image_size // 35) | 1)}",
    ]
    if args.precision != "preset":
        overrides.append(f"train.cpu_bf16={'true' if args.precision == 'bf16' else 'false'}")
    config = load_config("tusk", "tusk_tetrominoes", overrides)
    torch.manual_seed(args.seed)
    method = TuskMethod(config)
    return method, method.configure_optimizers()


def _autocast(method):
    """The trainer's autocast for this method's config on CPU (bfloat16 when train.cpu_bf16)."""
    import torch

    from kp_perception_training.trainer import training_autocast

    return training_autocast(method.config.train, torch.device("cpu"))


def _main_step(method, optimizers, batch) -> dict:
    opt = optimizers["main"]
    opt.zero_grad(set_to_none=True)
    with _autocast(method):
        loss, _, extra = method(batch)
    loss.backward()
    opt.step()
    return {k: v.float() for k, v in extra.items()}


def ours_step(method, optimizers, batch) -> None:
    """Main step, then prototype steps on the detached descriptors (TuskMethod.after_main_step)."""
    extra = _main_step(method, optimizers, batch)
    method.after_main_step(batch, extra, optimizers)


def reference_step(method, optimizers, batch, prototype_steps: int) -> None:
    """Main step, then prototype steps that each re-run the encoder with gradients (the reference's waste)."""
    import torch

    from kp_perception_training.tusk.losses import sliced_wasserstein_loss
    from kp_perception_training.tusk.tps import apply_tps, random_tps

    _main_step(method, optimizers, batch)
    images = batch["image"]
    opt = optimizers["prototypes"]
    cfg = method.loss_cfg
    for _ in range(prototype_steps):
        warped = apply_tps(images, random_tps(images.shape[0], **method.tps_cfg), padding_mode=method.image_padding)
        with _autocast(method):
            out = method.encoder(torch.cat([images, warped]))
        opt.zero_grad(set_to_none=True)
        method.zero_grad(set_to_none=True)
        # As in the reference: the loss sees live (not detached) descriptors, so backward runs
        # through the whole encoder; only the prototypes are stepped.
        desc = out["descriptors"].float().reshape(-1, out["descriptors"].shape[-1])
        sw = sliced_wasserstein_loss(desc, method.encoder.prototypes, cfg.sw_projections, cfg.sw_noise_std)
        sw = sw + 0.0 * desc.sum()  # keep the encoder in the graph (the reference loss was not detached)
        sw.backward()
        opt.step()
    method.zero_grad(set_to_none=True)


def _time(fn, steps: int) -> tuple[float, float]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - wall0) / steps, (time.process_time() - cpu0) / steps


def run(args: argparse.Namespace) -> dict:
    import torch
    from tqdm import tqdm

    from kp_perception_training.allocator import retain_freed_memory

    if args.threads:
        torch.set_num_threads(args.threads)
    allocator_retains = retain_freed_memory()  # as the trainer does
    method, optimizers = _build(args)
    gen = torch.Generator().manual_seed(args.seed)
    batch = {"image": torch.rand(args.batch, 3, args.image_size, args.image_size, generator=gen)}
    ours_step(method, optimizers, batch)  # warm-up both paths
    reference_step(method, optimizers, batch, args.prototype_steps)
    ours_wall, ref_wall, ours_cpu, ref_cpu = [], [], [], []
    for _ in tqdm(range(args.repeats), desc="tusk_throughput rounds", unit="round"):
        w, c = _time(lambda: ours_step(method, optimizers, batch), args.steps)
        ours_wall.append(w)
        ours_cpu.append(c)
        w, c = _time(lambda: reference_step(method, optimizers, batch, args.prototype_steps), args.steps)
        ref_wall.append(w)
        ref_cpu.append(c)
    ours_s, ref_s = statistics.median(ours_wall), statistics.median(ref_wall)
    ours_ips, ref_ips = args.batch / ours_s, args.batch / ref_s
    return {
        "benchmark": "tusk_throughput",
        "image_size": args.image_size,
        "batch": args.batch,
        "prototype_steps": args.prototype_steps,
        "torch_threads": torch.get_num_threads(),
        "precision": "bf16" if method.config.train.cpu_bf16 else "fp32",
        "allocator_retains_freed_memory": allocator_retains,
        "ours_images_per_s": round(ours_ips, 3),
        "reference_schedule_images_per_s": round(ref_ips, 3),
        "ratio_ours_vs_reference_schedule": round(ours_ips / ref_ips, 2),
        "ours_cpu_s_per_step": round(statistics.median(ours_cpu), 3),
        "reference_schedule_cpu_s_per_step": round(statistics.median(ref_cpu), 3),
        "official_code_anchor_images_per_s": REFERENCE_ANCHOR_IMAGES_PER_S,
        "ratio_ours_vs_official_anchor": round(ours_ips / REFERENCE_ANCHOR_IMAGES_PER_S, 2),
        "note": "wall-clock figures depend on CPU contention; the side-by-side ratio is the comparison",
    }


if __name__ == "__main__":
    from kp_perception_bench._entry import run_as_module

    run_as_module("tusk_throughput")
