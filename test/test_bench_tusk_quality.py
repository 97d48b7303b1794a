"""bench tusk_quality trains every seed through the real CLIs, reports mean ± std over seeds and checks
issue 15's goals on every seed, charging each run only its own CPU time."""

import argparse
import json
import math
import statistics
from pathlib import Path

import pytest

import kp_perception_bench.tusk_quality as tq
from kp_perception.errors import KpPerceptionError

TINY = ["--datasets", "tetrominoes", "--max-minutes", "0.05", "--evals", "1", "--train-images", "24",
        "--test-images", "12", "--no-doc", "--set", "model.width=8", "model.descriptor_dim=8",
        "decoder.rgba.hidden=16", "train.batch_size=4", "train.num_workers=0"]


def _args(work: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    tq.add_arguments(parser)
    return parser.parse_args([*TINY, "--workdir", str(work), *extra])


@pytest.mark.timeout(300)
def test_two_seeds_side_by_side_give_two_runs_their_summary_and_cpu_time(tmp_path, monkeypatch):
    monkeypatch.setattr(tq, "results_dir", lambda: tmp_path / "results")
    report = tq.run(_args(tmp_path / "work", "--seeds", "0", "1", "--jobs", "2"))
    (result,) = report["results"]
    seeds = result["seeds"]
    assert [s["seed"] for s in seeds] == [0, 1] and result["jobs"] == 2
    for s in seeds:
        assert s["final"]["step"] > 0 and s["cpu_minutes"] > 0
        assert (tmp_path / "work" / "logs" / f"tetrominoes_s{s['seed']}.log").read_text().count("$ kp-perception") == 4
        assert (tmp_path / "work" / f"tetrominoes_train_s{s['seed']}" / "objects.csv").is_file()
    # Each seed simulated its own images.
    a, b = ((tmp_path / "work" / f"tetrominoes_train_s{k}" / "objects.csv").read_text() for k in (0, 1))
    assert a != b
    ari = [s["final"]["foreground_ari"] for s in seeds]
    assert result["metrics"]["foreground_ari"]["mean"] == pytest.approx(statistics.fmean(ari))
    assert result["metrics"]["foreground_ari"]["std"] == pytest.approx(statistics.stdev(ari))
    written = json.loads((tmp_path / "results" / "tusk_quality.json").read_text())
    assert written["results"][0]["seeds"][1]["final"] == seeds[1]["final"]
    assert (tmp_path / "results" / "tusk_quality.png").is_file()
    text = tq._markdown(report)
    assert "seed 1" in text and "goal NOT met" in text  # 3 s of training meets no goal

    with pytest.raises(KpPerceptionError, match="already holds a run"):
        tq.run(_args(tmp_path / "work", "--seeds", "0"))

    # --report-only recomputes the summary from the recorded seeds and trains nothing.
    recorded = json.loads((tmp_path / "results" / "tusk_quality.json").read_text())
    recorded["results"][0]["metrics"] = {}
    (tmp_path / "results" / "tusk_quality.json").write_text(json.dumps(recorded))
    again = tq.run(_args(tmp_path / "work", "--report-only"))
    assert again["results"][0]["metrics"]["foreground_ari"] == result["metrics"]["foreground_ari"]

    # An arm (--tag) writes its own files and leaves the presets' results alone.
    before = (tmp_path / "results" / "tusk_quality.json").read_text()
    arm = tq.run(_args(tmp_path / "work_arm", "--seeds", "2", "--tag", "arm"))
    assert arm["tag"] == "arm" and [s["seed"] for s in arm["results"][0]["seeds"]] == [2]
    assert (tmp_path / "results" / "tusk_quality.json").read_text() == before
    assert json.loads((tmp_path / "results" / "tusk_quality_arm.json").read_text())["results"][0]["seeds"][0]["seed"] == 2


def _seed(seed: int, cpu: float | None, **final: float) -> dict:
    return {"seed": seed, "final": final, "curve": [final], "cpu_minutes": cpu}


def test_the_goal_holds_only_when_every_seed_meets_every_threshold_within_budget():
    good = {"purity": 0.95, "inverse_purity": 0.8, "detection_recall": 0.9}
    budget = tq.GOAL_CPU_MINUTES["tabletop"]
    assert tq.summarise("tabletop", [_seed(0, 10.0, **good), _seed(1, 12.0, **good)])["goal"]["met"]
    one_low = tq.summarise("tabletop", [_seed(0, 10.0, **good), _seed(1, 10.0, **{**good, "detection_recall": 0.6})])
    assert not one_low["goal"]["met"] and one_low["goal"]["met_per_seed"] == [True, False]
    slow = tq.summarise("tabletop", [_seed(0, budget + 1.0, **good)])
    assert not slow["goal"]["met"] and slow["goal"]["within_cpu_budget_per_seed"] == [False]


def test_a_nan_metric_fails_the_goal_and_is_left_out_of_the_mean():
    seeds = [_seed(0, 5.0, purity=math.nan, detection_recall=0.0), _seed(1, 5.0, purity=0.9, detection_recall=0.8)]
    summary = tq.summarise("tabletop", seeds)
    assert summary["goal"]["met_per_seed"] == [False, True]
    assert summary["metrics"]["purity"]["mean"] == pytest.approx(0.9)
    assert summary["metrics"]["purity"]["seeds_missing"] == 1 and summary["metrics"]["purity"]["std"] is None


def test_results_written_before_seeds_existed_merge_as_one_seed_without_cpu_time():
    old = {"dataset": "mnist-hard", "config": "tusk_mnist_hard", "overrides": [], "paper": tq.PAPER["mnist-hard"],
           "curve": [{"minutes": 25.0, "step": 10, "classification": 0.3, "localisation": 0.99}],
           "final": {"minutes": 25.0, "step": 10, "classification": 0.3, "localisation": 0.99}}
    (merged,) = tq._merge([old], [])
    assert [s["seed"] for s in merged["seeds"]] == [0] and merged["seeds"][0]["cpu_minutes"] is None
    assert merged["metrics"]["classification"]["mean"] == pytest.approx(0.3)
    assert not merged["goal"]["met"]
    assert "mnist-hard goal NOT met" in tq._markdown({"results": [merged]})


def test_bad_job_and_seed_options_are_clear_errors(tmp_path):
    with pytest.raises(KpPerceptionError, match="--jobs"):
        tq.run(_args(tmp_path, "--jobs", "0"))
    with pytest.raises(KpPerceptionError, match="repeats"):
        tq.run(_args(tmp_path, "--seeds", "1", "1"))
