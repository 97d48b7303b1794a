"""bench tusk_refit_variants re-clusters a finished run's descriptor bank and scores each variant with the
real eval, choosing on validation images only."""

import argparse

import pytest

import kp_perception_bench.tusk_quality as tq
import kp_perception_bench.tusk_refit_variants as rv
from kp_perception.checkpoint import load_checkpoint, save_checkpoint
from kp_perception.errors import KpPerceptionError

TINY = ["--datasets", "tetrominoes", "--max-minutes", "0.05", "--evals", "1", "--train-images", "24",
        "--test-images", "12", "--no-doc", "--set", "model.width=8", "model.descriptor_dim=8",
        "model.num_prototypes=6", "decoder.rgba.hidden=16", "train.batch_size=4", "train.num_workers=0",
        "prototypes.refit_bank=64", "train.checkpoint_every=2"]


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.timeout(300)
def test_variants_of_one_run_differ_only_in_their_names(tmp_path, monkeypatch):
    monkeypatch.setattr(tq, "results_dir", lambda: tmp_path / "results")
    monkeypatch.setattr(rv, "results_dir", lambda: tmp_path / "results")
    work = tmp_path / "work"
    tq.run(_parse(tq, [*TINY, "--workdir", str(work), "--seeds", "0"]))
    report = rv.run(_parse(rv, ["--workdir", str(work), "--seeds", "0", "--variants", "W", "saved", "R",
                                "--validation-images", "12"]))
    assert (tmp_path / "results" / "tusk_refit_variants_tetrominoes.json").is_file()
    assert report["chosen_on_validation"] in {"W", "saved", "R"}
    for split in ("validation", "test"):
        by = {v: seeds[0] for v, seeds in report["per_seed"][split].items()}
        # The preset clusters its bank whitened, so the run saved exactly W's centres.
        assert by["saved"] == by["W"], by
        # The masks are the decoder's: the same whatever names the prototypes give.
        assert by["R"]["foreground_ari"] == by["W"]["foreground_ari"]
        assert all(0.0 <= s["colour_accuracy"] <= 1.0 for s in by.values())
    # A finished run trained without a bank (prototypes.refit_bank=0 keeps neither buffer) is refused.
    ckpt = load_checkpoint(work / "run_tetrominoes_s0" / "last.pt", expected_kind="tusk")
    assert {"descriptor_bank", "bank_seen"} <= set(ckpt["training"]["method"])
    for key in ("descriptor_bank", "bank_seen"):
        del ckpt["training"]["method"][key]
    save_checkpoint(tmp_path / "no_bank" / "last.pt", ckpt)
    with pytest.raises(KpPerceptionError, match="has no descriptor bank: train it with prototypes.refit_bank > 0"):
        rv.variant_checkpoint(tmp_path / "no_bank", "W", tmp_path / "out.pt")


def test_a_workdir_without_finished_runs_is_refused(tmp_path):
    with pytest.raises(KpPerceptionError, match="missing"):
        rv.run(_parse(rv, ["--workdir", str(tmp_path), "--seeds", "0"]))


def test_choice_counts_seeds_meeting_then_mean_colour_then_order():
    seed = lambda shape, colour: {"shape_accuracy": shape, "colour_accuracy": colour}  # noqa: E731
    validation = {"A": [seed(0.9, 0.96), seed(0.9, 0.99)], "B": [seed(0.9, 0.98), seed(0.8, 1.0)],
                  "C": [seed(0.99, 0.95), seed(0.99, 0.95)]}
    assert rv.choose(validation) == "B"  # A and B meet on one seed each; B has the higher mean colour
    validation["B"] = validation["A"]
    assert rv.choose(validation) == "A"  # a tie goes to the first listed
