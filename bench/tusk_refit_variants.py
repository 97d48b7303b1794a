"""TUSK refit clusterings compared on finished Tetrominoes runs, chosen on validation images.

The ``prototypes.refit_bank`` refit does not touch training: it only decides
which centres a saved checkpoint names with. So every clustering in
``training/tusk/refit.py`` can be applied to the bank inside a finished run's
``last.pt``, and the result is exactly what a run trained with that clustering
would have saved. For each seed's run (``<workdir>/run_tetrominoes_s<seed>``,
made by ``bench tusk_quality`` with the refit on) this writes one checkpoint
per variant and scores it with the real ``kp-perception eval``:

* on **validation** images (``sim tetrominoes --seed 800000+seed``, a seed
  neither training, 1000+seed, nor the test set, 900000+seed, uses), which
  choose: the variant meeting issue 15's shape and colour thresholds on the
  most seeds, then the higher mean colour, then the first variant listed
  (``saved``: the prototypes the run saved, e.g. a tracked refit);
* on the **test** images of the runs (``<workdir>/tetrominoes_test_s<seed>``),
  reported whatever they are.

fg-ARI is the decoder's and does not depend on the prototypes (it is recorded per split, the same for every variant).

    OMP_NUM_THREADS=1 python -m kp_perception_bench.tusk_refit_variants --workdir build/tusk_quality_r7 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kp_perception.errors import KpPerceptionError
from kp_perception_bench._outputs import results_dir
from kp_perception_bench.tusk_quality import GOALS, _cli, _simulate

VARIANTS = {  # name -> (refit method, n_init), or None: the prototypes the run saved, as they are
    "R": ("kmeans", 3),
    "R10": ("kmeans", 10),
    "OW": ("over_ward", 3),
    "W": ("whitened", 3),
    "saved": None,
}
VALIDATION_SEED = 800_000
THRESHOLDS = {k: GOALS["tetrominoes"][k] for k in ("shape_accuracy", "colour_accuracy")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, required=True, help="a bench tusk_quality --workdir with refit runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["R", "R10", "OW", "W"], choices=list(VARIANTS),
                        help="clusterings to compare, in tie-break order (saved: the run's own prototypes)")
    parser.add_argument("--validation-images", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=1, help="evaluations side by side")
    parser.add_argument("--tag", default="tetrominoes", help="results go to tusk_refit_variants_TAG.json")


def variant_checkpoint(run: Path, variant: str, out: Path) -> Path:
    """Write ``run/last.pt`` with ``variant``'s centres of its descriptor bank as the encoder's prototypes."""
    import numpy as np
    import torch

    from kp_perception.checkpoint import load_checkpoint, save_checkpoint
    from kp_perception_training.tusk.refit import REFIT_METHODS

    ckpt = load_checkpoint(run / "last.pt", expected_kind="tusk")
    method = ckpt["training"]["method"]
    if "descriptor_bank" not in method:
        raise KpPerceptionError(f"{run / 'last.pt'} has no descriptor bank: train it with prototypes.refit_bank > 0")
    filled = min(int(method["bank_seen"]), method["descriptor_bank"].shape[0])
    bank = method["descriptor_bank"][:filled].double().numpy()
    protos = ckpt["encoder"]["prototypes"]
    if VARIANTS[variant] is None:
        save_checkpoint(out, ckpt)
        return out
    name, n_init = VARIANTS[variant]
    centres = REFIT_METHODS[name](bank, protos.shape[0], n_init=n_init)
    if len(centres) != protos.shape[0]:
        raise KpPerceptionError(f"{variant}: {len(centres)} centres for {protos.shape[0]} prototypes")
    ckpt["encoder"]["prototypes"] = torch.from_numpy(np.ascontiguousarray(centres)).to(protos.dtype)
    save_checkpoint(out, ckpt)
    return out


def _scores(path: Path) -> dict[str, float]:
    metrics = json.loads(path.read_text())
    flat = next(v for k, v in metrics.items() if isinstance(v, dict))
    return {k: flat[k] for k in ("foreground_ari", "shape_accuracy", "colour_accuracy", "prototypes_used")}


def choose(validation: dict[str, list[dict[str, float]]]) -> str:
    """The variant meeting the thresholds on the most seeds, then the higher mean colour, then the first."""
    def key(item: tuple[int, str]) -> tuple[int, float, int]:
        order, name = item
        seeds = validation[name]
        met = sum(all(s[m] >= t for m, t in THRESHOLDS.items()) for s in seeds)
        return (met, statistics.fmean(s["colour_accuracy"] for s in seeds), -order)

    return max(enumerate(validation), key=key)[1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    work = args.workdir / "refit_variants"
    log = work / "eval.log"
    jobs = []
    for seed in args.seeds:
        run_dir = args.workdir / f"run_tetrominoes_s{seed}"
        test = args.workdir / f"tetrominoes_test_s{seed}"
        if not (run_dir / "last.pt").is_file() or not test.is_dir():
            raise KpPerceptionError(f"{run_dir}/last.pt or {test} missing: run bench tusk_quality with this --workdir")
        val = _simulate("tetrominoes", work / f"tetrominoes_val_s{seed}", args.validation_images,
                        VALIDATION_SEED + seed, args, log)
        for variant in args.variants:
            ckpt = variant_checkpoint(run_dir, variant, work / f"s{seed}_{variant}.pt")
            for split, data in (("validation", val), ("test", test)):
                jobs.append((seed, variant, split, ckpt, data, work / f"s{seed}_{variant}_{split}.json"))

    def evaluate(job: tuple) -> None:
        *_, ckpt, data, out = job
        _cli("eval", str(ckpt), "--data", str(data), "--json", str(out), log=log)

    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        list(tqdm(pool.map(evaluate, jobs), total=len(jobs), desc="tusk_refit_variants", unit="eval"))

    per: dict[str, dict[str, list[dict[str, float]]]] = {"validation": {}, "test": {}}
    for seed, variant, split, *_, out in jobs:
        per[split].setdefault(variant, []).append({"seed": seed, **_scores(out)})
    chosen = choose(per["validation"])
    summary = {
        split: {v: {m: statistics.fmean(s[m] for s in seeds) for m in ("shape_accuracy", "colour_accuracy")}
                | {"seeds_meeting_shape_and_colour": sum(all(s[m] >= t for m, t in THRESHOLDS.items()) for s in seeds)}
                for v, seeds in by_variant.items()}
        for split, by_variant in per.items()
    }
    report = {"benchmark": "tusk_refit_variants", "workdir": str(args.workdir), "seeds": args.seeds,
              "variants": {v: ({"method": VARIANTS[v][0], "n_init": VARIANTS[v][1]} if VARIANTS[v] else "as saved")
                           for v in args.variants},
              "thresholds": THRESHOLDS, "chosen_on_validation": chosen, "summary": summary, "per_seed": per}
    out = results_dir() / f"tusk_refit_variants_{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    from kp_perception_bench._entry import run_as_module

    run_as_module("tusk_refit_variants")
