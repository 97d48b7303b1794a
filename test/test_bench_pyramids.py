"""The Pyramids quality benchmark keeps the paper's FPN map sizes at any image size, and its scene-family
grid (issue 20) reports per family, over families, paired by seed, with both fits and keypoint placement."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import kp_perception_bench.pyramids_quality as pq
from kp_perception.errors import KpPerceptionError
from kp_perception.models import build_encoder
from kp_perception_bench.pyramids_quality import PAPER_FINEST_MAP, paper_finest_stride
from kp_perception_training.sim.annotations import read_annotations


@pytest.mark.parametrize("size", [64, 128])
def test_benchmark_stride_gives_the_paper_maps(size):
    encoder = build_encoder(
        "pyramids", {"width": 4, "fpn_channels": 8, "head_channels": 8, "finest_stride": paper_finest_stride(size)}
    )
    maps = encoder.level_features(torch.zeros(1, 3, size, size))
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 16), (32, 32)]


@pytest.mark.parametrize("size", [16, 48, 96, 200, 256])
def test_benchmark_stride_is_the_largest_that_keeps_32_cells(size):
    stride = paper_finest_stride(size)
    assert stride & (stride - 1) == 0
    assert size // stride >= PAPER_FINEST_MAP or stride == 1
    assert size // (2 * stride) < PAPER_FINEST_MAP


# --- scene families (issue 20) -------------------------------------------------------------------

TINY = ["--families", "side", "--seeds", "1", "--methods", "pyramids,transporter30", "--episodes", "2",
        "--test-episodes", "2", "--frames", "6", "--steps", "5", "--no-doc"]


def _args(work: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pq.add_arguments(parser)
    return parser.parse_args([*TINY, "--work", str(work), *extra])


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    """One family × one seed × two methods × 5 steps through the real sim, train and eval CLIs."""
    root = tmp_path_factory.mktemp("grid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pq, "results_dir", lambda: root / "results")
        result = pq.run(_args(root / "work"))
    return root, result


@pytest.mark.timeout(600)
def test_families_grid_reports_every_fit_pair_and_placement(tiny_grid):
    root, result = tiny_grid
    assert result["families_run"] == ["side"] == result["setting"]["families_requested"]
    assert json.loads((root / "results" / "pyramids_quality_families.json").read_text()) == result
    for fit in ("least_squares", "ridge"):
        table = result["per_family_rmse_px"]["side"][fit]
        assert set(table["pyramids"]) == {"level_1", "level_2", "flattened"} and "flattened" in table["transporter30"]
        pair = result["paired_flattened"][fit]["transporter30"]
        assert pair["pairs"] == 1 and pair["detail"][0]["family"] == "side"
        p, t = pair["detail"][0]["pyramids"], pair["detail"][0]["transporter30"]
        assert pair["pyramids_wins"] == int(p < t)
        assert result["goal"][fit]["margin_vs_transporter30"] == pytest.approx(1 - p / t)
        # one family: the mean over families is that family's mean
        over = result["mean_over_families_rmse_px"][fit]["pyramids"]["flattened"]["mean"]
        assert over == pytest.approx(table["pyramids"]["flattened"]["mean"])
    for name, levels in result["placement"]["side"].items():
        assert set(levels) == ({"level_1", "level_2", "hierarchy", "keypoint_subsets", "episode_halves"}
                               if name == "pyramids" else {"level_1", "keypoint_subsets", "episode_halves"})
        assert levels["episode_halves"]["all/flattened"] > 0 and "robot/intercept_only" in levels["episode_halves"]
        sub = levels["keypoint_subsets"]
        assert sub["on_arm"]["keypoints"] + sub["off_arm"]["keypoints"] == 30
        assert 0.0 <= levels.get("hierarchy", {}).get("same_instance", 0.0) <= 1.0
        for cell in (c for k, c in levels.items() if k.startswith("level_")):
            assert sum(cell["fraction"].values()) == pytest.approx(1.0)
            assert set(cell["fraction"]) >= {"arm", "object", "background"}
    md = (root / "results" / "pyramids_quality_families.md").read_text()
    assert "| side | pyramids |" in md and "paired seed × family wins" in md


@pytest.mark.timeout(600)
def test_ground_truth_points_are_placed_on_their_own_class(tiny_grid):
    """keypoint_placement on the simulator's masks: visible arm points land on the arm, object points on objects."""
    root, _ = tiny_grid
    test_dir = next((root / "work" / "side").glob("sim_test_*"))
    masks, classes = pq.instance_masks(test_dir)
    assert {"arm", "object", "background"} <= set(classes.values())
    by_frame: dict[tuple[str, int], dict[str, tuple[float, float]]] = {}
    for a in read_annotations(test_dir / "annotations.csv"):
        if a.visible:
            group = "arm" if a.name == "gripper" or a.name.startswith("arm/") else "object"
            by_frame.setdefault((a.sequence, a.frame), {}).setdefault(group, (a.x, a.y))
    keys = sorted(k for k, g in by_frame.items() if len(g) == 2)
    assert len(keys) >= 4
    npz = root / "gt.npz"
    np.savez(npz, keypoints_px=np.array([[by_frame[k]["arm"], by_frame[k]["object"]] for k in keys]),
             sequences=np.array([k[0] for k in keys]), frames=np.array([k[1] for k in keys]), level_sizes=np.array([1, 1]))
    placed = pq.keypoint_placement(npz, masks, classes)
    assert placed["level_1"]["fraction"]["arm"] == 1.0 and placed["level_1"]["mostly_on"]["arm"] == 1
    assert placed["level_2"]["fraction"]["object"] == 1.0 and placed["level_2"]["mostly_on"]["object"] == 1


@pytest.mark.timeout(600)
def test_a_rerun_reuses_the_finished_runs(tiny_grid, monkeypatch):
    root, result = tiny_grid
    monkeypatch.setattr(pq, "results_dir", lambda: root / "results_again")
    again = pq.run(_args(root / "work"))
    assert [r["train_seconds"] for r in again["runs"]] == [r["train_seconds"] for r in result["runs"]]
    assert again["per_family_rmse_px"] == result["per_family_rmse_px"]


@pytest.mark.timeout(600)
def test_another_test_set_rescores_the_finished_checkpoints_without_training(tiny_grid, monkeypatch):
    """--test-episodes changes only the scoring: same checkpoints and training records, new test frames."""
    root, result = tiny_grid
    monkeypatch.setattr(pq, "results_dir", lambda: root / "results_rescored")
    checkpoints = {p: p.stat().st_mtime_ns for p in (root / "work" / "side" / "runs").glob("*_5st/**/*.pt")}
    assert checkpoints
    larger = pq.run(_args(root / "work", "--test-episodes", "3"))
    assert larger["setting"]["test_episodes"] == 3
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints, "nothing was re-trained"
    for mine, theirs in zip(larger["runs"], result["runs"], strict=True):
        assert (mine["method"], mine["seed"]) == (theirs["method"], theirs["seed"])
        assert mine["train_seconds"] == theirs["train_seconds"] and mine["final_loss_ema"] == theirs["final_loss_ema"]
        assert (mine["test_data"], theirs["test_data"]) == ("sim_test_64_3x6", "sim_test_64_2x6")
        assert mine["rmse_px"]["flattened"] != theirs["rmse_px"]["flattened"], "scored on other frames"
    # the smaller set's records stay, so asking for it again reuses them
    assert pq.run(_args(root / "work"))["per_family_rmse_px"] == result["per_family_rmse_px"]


def test_families_default_to_the_larger_test_set():
    parser = argparse.ArgumentParser()
    pq.add_arguments(parser)
    families = pq._setting(parser.parse_args(["--families", "side"]))
    single = pq._setting(parser.parse_args([]))
    assert families["test_episodes"] == pq.FAMILY_TEST_EPISODES > single["test_episodes"]


@pytest.mark.timeout(600)
def test_parallel_jobs_give_the_same_runs_as_one_job(tiny_grid, monkeypatch):
    """--jobs 2 runs the grid's train/eval processes side by side: same seeds, same data, same figures."""
    root, result = tiny_grid
    monkeypatch.setattr(pq, "results_dir", lambda: root / "results_jobs")
    parallel = pq.run(_args(root / "work", "--jobs", "2", "--tag", "jobs2"))
    assert parallel["wall_clock_seconds"]["jobs"] == 2 and parallel["families_run"] == ["side"]
    assert [(r["method"], r["seed"]) for r in parallel["runs"]] == [(r["method"], r["seed"]) for r in result["runs"]]
    for mine, theirs in zip(parallel["runs"], result["runs"], strict=True):
        # trained again under the new tag, not reused from the one-job grid
        run_dir = root / "work" / "side" / "runs" / f"{mine['method']}_s0_64px_5st_jobs2"
        assert (pq.scored_dir(run_dir, root / "work" / "side" / "sim_test_64_2x6") / "bench_run.json").is_file()
        assert mine["rmse_px"] == pytest.approx(theirs["rmse_px"], rel=1e-3)
    assert (root / "work" / "side" / "logs" / "pyramids_s0_64px_5st_jobs2.log").is_file()


@pytest.mark.timeout(600)
def test_a_finished_run_with_other_settings_is_not_mixed_in(tiny_grid):
    """Run directories are named without the level sizes or σ: reusing one trained with other values is refused."""
    root, result = tiny_grid
    assert next(r for r in result["runs"] if r["method"] == "pyramids")["keypoints_per_level"] == [15, 15]
    with pytest.raises(KpPerceptionError, match=r"trained with model.keypoints_per_level=\[15, 15\].*asks for \[10, 20\]"):
        pq.run(_args(root / "work", "--methods", "pyramids", "--set", "model.keypoints_per_level=[10,20]"))
    # nor one trained with another heatmap width, another override the directory name does not hold
    sigma = result["setting"]["pyramids_sigma"]
    assert sigma == pq.PYRAMIDS_SIGMA["cpu"]
    with pytest.raises(KpPerceptionError, match=rf"trained with model.sigma={sigma}, this run asks for {sigma / 2}"):
        pq.run(_args(root / "work", "--methods", "pyramids", "--set", f"model.sigma={sigma / 2}"))


def test_unknown_family_is_one_clear_error(tmp_path):
    with pytest.raises(KpPerceptionError, match="unknown scene family \\['nowhere'\\]"):
        pq.run(_args(tmp_path, "--families", "default,nowhere"))


def _record(family: str, method: str, seed: int, flat: float) -> dict:
    levels = {"level_1": flat + 2, "level_2": flat + 0.5, "flattened": flat} if method == "pyramids" else {
        "level_1": flat, "flattened": flat}
    return {"family": family, "method": method, "seed": seed, "rmse_px": levels,
            "rmse_px_ridge": {k: v - 0.1 for k, v in levels.items()}}


def test_mean_over_families_is_the_mean_of_family_means_and_pairs_match_seeds():
    runs = [_record("a", "pyramids", s, v) for s, v in enumerate((4.0, 5.0, 6.0))]
    runs += [_record("a", "transporter30", s, v) for s, v in enumerate((5.0, 4.5, 7.0))]
    runs += [_record("b", "pyramids", s, v) for s, v in enumerate((8.0, 8.0, 8.0))]
    runs += [_record("b", "transporter30", s, v) for s, v in enumerate((9.0, 7.0, 10.0))]
    out = pq.family_summary(runs, ["a", "b"])
    flat = out["mean_over_families_rmse_px"]["least_squares"]["pyramids"]["flattened"]
    assert flat["mean"] == pytest.approx((5.0 + 8.0) / 2) and flat["per_family"] == [5.0, 8.0]
    pairs = out["paired_flattened"]["least_squares"]["transporter30"]
    assert pairs["pairs"] == 6 and pairs["pyramids_wins"] == 4  # a: s0, s2; b: s0, s2
    goal = out["goal"]["least_squares"]
    assert goal["margin_vs_transporter30"] == pytest.approx(1 - 6.5 / ((5.5 + 26 / 3) / 2))
    assert goal["wins_at_least_two_thirds"] and goal["levels_progress_l1_gt_l2_gt_flat"]


@pytest.mark.timeout(600)
def test_grid_splits_the_error_by_landmark_group_and_saved_keypoints_reproduce_it(tiny_grid):
    root, result = tiny_grid
    groups = result["by_landmark_group"]
    assert set(groups) == {"robot", "objects"}
    for g, entry in groups.items():
        assert set(entry["per_family"]["side"]) == {"pyramids", "transporter30"}
        assert set(entry["per_family"]["side"]["pyramids"]) == {"level_1", "level_2", "flattened"}
        flat = {r["method"]: r["rmse_px_by_group"][g]["flattened"] for r in result["runs"]}
        v = entry["vs_transporter30"]
        assert v["pairs"] == 1 and v["paired_wins"] == int(flat["pyramids"] < flat["transporter30"])
        assert v["margin"] == pytest.approx(1 - flat["pyramids"] / flat["transporter30"])
    # a run evaluated before the evaluator split by group: its saved keypoints give the same least-squares split
    test_dir = next((root / "work" / "side").glob("sim_test_*"))
    for r in result["runs"]:
        npz = pq.scored_dir(root / "work" / "side" / "runs" / f"{r['method']}_s0_64px_5st", test_dir) / "landmark_keypoints.npz"
        again = pq.group_scores(npz, test_dir, r["seed"])
        for g, cells in r["rmse_px_by_group"].items():
            assert again["rmse_px_by_group"][g] == pytest.approx(cells, rel=1e-9)
        assert "rmse_px_ridge_by_group" in r and "rmse_px_ridge_by_group" not in again
    md = (root / "results" / "pyramids_quality_families.md").read_text()
    assert "| side | pyramids |" in md.split("RMSE by landmark group")[1] and "robot: flattened Pyramids" in md


@pytest.mark.timeout(600)
def test_reanalyse_recomputes_the_placement_from_the_run_directories(tiny_grid, monkeypatch):
    root, result = tiny_grid
    monkeypatch.setattr(pq, "results_dir", lambda: root / "results_re")
    parser = argparse.ArgumentParser()
    pq.add_arguments(parser)
    again = pq.run(parser.parse_args(["--reanalyse", str(root / "results" / "pyramids_quality_families.json"),
                                      "--work", str(root / "work"), "--no-doc"]))
    assert again["placement"] == result["placement"] and again["wall_clock_seconds"] == result["wall_clock_seconds"]
    assert "hierarchy" in again["placement"]["side"]["pyramids"]


def test_hierarchy_stats_tell_children_that_follow_their_parent_from_chance():
    """Two parents on two objects moving independently; each child sits 2 px from its own parent."""
    rng = np.random.default_rng(0)
    frames = 50
    parents = rng.uniform(10, 50, size=(frames, 2, 2))
    children = np.repeat(parents, 2, axis=1) + np.array([2.0, 0.0])  # children 0,1 -> parent 0; 2,3 -> parent 1
    kps = np.concatenate([parents, children], axis=1)
    ids = np.tile(np.array([2, 3, 2, 2, 3, 3]), (frames, 1))  # instance ids: object 2 and object 3
    stats = pq.hierarchy_stats(kps, ids, [2, 4], background=[0])
    assert stats["same_instance"] == 1.0 and stats["same_instance_chance"] == 0.0
    assert stats["distance_px"] == pytest.approx(2.0) and stats["distance_px_chance"] > 5.0
    assert stats["motion_r2"] == pytest.approx(1.0) and stats["motion_r2_chance"] < 0.3


@pytest.mark.timeout(600)
def test_no_train_collects_a_grid_cut_short_and_says_what_is_missing(tiny_grid, monkeypatch):
    root, result = tiny_grid
    monkeypatch.setattr(pq, "results_dir", lambda: root / "results_cut")
    collected = pq.run(_args(root / "work", "--families", "side,kuka", "--seeds", "2", "--no-train"))
    assert collected["families_run"] == [] and collected["families_partial"] == ["side"]
    assert {"family": "kuka", "runs": "all (not simulated)"} in collected["missing_runs"]
    assert {(m["method"], m["seed"]) for m in collected["missing_runs"] if m["family"] == "side"} == {
        ("pyramids", 1), ("transporter30", 1)}
    assert collected["per_family_rmse_px"] == result["per_family_rmse_px"]
    assert not (root / "work" / "kuka").exists(), "--no-train neither simulates nor trains"
    assert "cut short: side (1 of 2 seeds)" in (root / "results_cut" / "pyramids_quality_families.md").read_text()


@pytest.mark.timeout(600)
def test_fit_curve_at_strength_zero_is_the_benchmark_least_squares_figure(tiny_grid):
    """The post-hoc ridge curve re-fits from the saved keypoints on the benchmark's own frames and halves."""
    from kp_perception_bench.pyramids_fit_curve import fit_curve

    root, result = tiny_grid
    for r in result["runs"]:
        run_dir = next((root / "work" / "side" / "runs").glob(f"{r['method']}_s{r['seed']}_*"))
        test_dir = next((root / "work" / "side").glob("sim_test_*"))
        curve = fit_curve(pq.scored_dir(run_dir, test_dir) / "landmark_keypoints.npz", test_dir / "annotations.csv", r["seed"])
        assert curve["flattened"]["0"] == pytest.approx(r["rmse_px"]["flattened"], rel=1e-9)
        if r["method"] == "pyramids":
            assert curve["level_2"]["0"] == pytest.approx(r["rmse_px"]["level_2"], rel=1e-9)
        assert len(set(curve["flattened"].values())) > 1, "the ridge strength changes the fit"


def _compare_args(*extra: str) -> argparse.Namespace:
    from kp_perception_bench import pyramids_compare

    parser = argparse.ArgumentParser()
    pyramids_compare.add_arguments(parser)
    return parser.parse_args(["--name", "t", "--families", "side", *extra])


def test_compare_pairs_arms_of_a_recorded_grid_and_measures_them_against_the_baseline(tiny_grid, monkeypatch):
    """Arms read from a real grid's JSON: figures, margin and wins come from the same family × seed runs."""
    from kp_perception_bench import pyramids_compare

    root, result = tiny_grid
    monkeypatch.setattr(pyramids_compare, "results_dir", lambda: root / "results")
    grid = root / "results" / "pyramids_quality_families.json"
    out = pyramids_compare.run(_compare_args("--baseline", "T", "--arm", f"P={grid}:pyramids",
                                             "--arm", f"T={grid}:transporter30"))
    runs = {r["method"]: r for r in result["runs"]}
    p, t = runs["pyramids"]["rmse_px"]["flattened"], runs["transporter30"]["rmse_px"]["flattened"]
    assert out["pairs"] == [["side", 0]]
    assert out["per_family"]["side"]["arms"]["P"]["least_squares"]["level_2"]["mean"] == runs["pyramids"]["rmse_px"]["level_2"]
    assert "level_2" not in out["per_family"]["side"]["arms"]["T"]["least_squares"]
    assert out["mean_over_families"]["P"]["least_squares"]["margin_vs_baseline"] == pytest.approx((t - p) / t)
    assert out["mean_over_families"]["P"]["least_squares"]["paired_wins"] == int(p < t)
    assert json.loads((root / "results" / "pyramids_compare_t.json").read_text())["pairs"] == [["side", 0]]
    split = pyramids_compare.run(_compare_args("--baseline", "T", "--arm", f"P={grid},{grid}:pyramids",
                                               "--arm", f"T={grid}:transporter30"))
    assert split["per_family"] == out["per_family"]  # an arm may gather its families from several JSONs
    with pytest.raises(KpPerceptionError, match="no run of method"):
        pyramids_compare.run(_compare_args("--baseline", "T", "--arm", f"T={grid}:keynet30"))
    with pytest.raises(KpPerceptionError, match="LABEL=JSON:METHOD"):
        pyramids_compare.run(_compare_args("--baseline", "T", "--arm", "T"))


def test_compare_keeps_only_the_pairs_every_arm_ran(tmp_path):
    from kp_perception_bench.pyramids_compare import arm_runs, compare

    def grid(path, seeds, value):
        runs = [{"family": "side", "method": "pyramids", "seed": s,
                 "rmse_px": {"flattened": value + s, "level_1": 9.0, "level_2": value},
                 "rmse_px_ridge": {"flattened": value, "level_1": 9.0, "level_2": value}} for s in seeds]
        path.write_text(json.dumps({"setting": {"families_requested": ["side"], "steps": 600}, "runs": runs}))
        return arm_runs(path, "pyramids")

    a, b = grid(tmp_path / "a.json", [0, 1, 2], 5.0), grid(tmp_path / "b.json", [1, 2, 3], 6.0)
    out = compare({"a": a, "b": b}, "b", ["side", "kuka"], None)
    assert out["pairs"] == [["side", 1], ["side", 2]]
    assert out["families_without_pairs"] == ["kuka"]
    mean_a = np.mean([5.0 + 1, 5.0 + 2])
    assert out["per_family"]["side"]["arms"]["a"]["least_squares"]["flattened"]["mean"] == pytest.approx(mean_a)
    assert out["mean_over_families"]["a"]["least_squares"]["paired_wins"] == 2
    with pytest.raises(KpPerceptionError, match="share no family"):
        compare({"a": a, "b": b}, "b", ["side"], [0])
    (tmp_path / "flat.json").write_text(json.dumps({"setting": {}, "runs": []}))
    with pytest.raises(KpPerceptionError, match="not a pyramids_quality --families"):
        arm_runs(tmp_path / "flat.json", "pyramids")


def test_keypoint_subsets_find_the_object_information_off_the_arm():
    """Two keypoints on the arm, one on the mug: the off-arm one alone places the mug, the arm ones do not."""
    from kp_perception_training.sim.annotations import Annotation

    rng = np.random.default_rng(5)
    rows, coords, keys = [], [], []
    for e in range(10):
        mug = rng.uniform(10, 54, size=2)
        for f in range(20):
            arm = rng.uniform(0, 64, size=2)
            keys.append((f"episode_{e:03d}", f))
            coords.append([arm, arm + 3.0, mug + rng.normal(0, 0.2, size=2)])
            rows += [Annotation(f"episode_{e:03d}", f, "gripper", *arm), Annotation(f"episode_{e:03d}", f, "mug/centre", *mug)]
    on_arm = np.array([True, True, False])
    out = pq.keypoint_subset_scores(np.array(coords), on_arm, rows, keys, seed=0)
    assert out["on_arm"]["keypoints"] == 2 and out["off_arm"]["keypoints"] == 1
    assert out["off_arm"]["objects"] < 0.5 < 5.0 < out["on_arm"]["objects"]
    assert out["on_arm"]["robot"] < 1e-6 < 5.0 < out["off_arm"]["robot"]
    assert pq.keypoint_subset_scores(np.array(coords), np.ones(3, bool), rows, keys, seed=0)["off_arm"] == {"keypoints": 0}


def test_episode_halves_tell_recognising_the_episode_from_placing_the_object():
    """Keypoints that only say which episode a frame is from (one per episode) place a still object exactly
    under frame halves, and no better than its mean position under episode halves."""
    from kp_perception_training.pyramids.evaluate import split_episode_halves
    from kp_perception_training.sim.annotations import Annotation

    rng = np.random.default_rng(0)
    episodes, per = 10, 20
    frames = [(f"episode_{e:03d}", i) for e in range(episodes) for i in range(per)]
    fit, scored = split_episode_halves(frames, seed=3)
    assert {frames[i][0] for i in fit}.isdisjoint({frames[i][0] for i in scored})
    assert sorted([*fit, *scored]) == list(range(len(frames))) and len(fit) == len(scored)
    place = rng.uniform(10, 50, size=(episodes, 2))  # the mug, still within each episode
    coords = np.zeros((len(frames), episodes, 2))
    for f, (seq, _) in enumerate(frames):
        coords[f, int(seq[-3:]), 0] = 1.0
    rows = [Annotation(seq, i, "mug/centre", *place[int(seq[-3:])]) for seq, i in frames]
    rows += [Annotation(seq, i, "gripper", float(i), 2.0 * i) for seq, i in frames]
    halves = pq.episode_half_scores(coords, [episodes], rows, frames, seed=3)
    from kp_perception_training.pyramids.evaluate import landmark_scores

    frame_halves = landmark_scores(coords, [episodes], rows, frames, 3, ridge=False)
    assert frame_halves["rmse_px_by_group"]["objects"]["flattened"] < 1e-6
    objects = halves["rmse_px_by_group"]["objects"]["flattened"]
    assert objects > 5.0 and objects == pytest.approx(halves["rmse_px_intercept_only_by_group"]["objects"], rel=0.05)
    # one episode cannot be split into halves: no figure rather than an error that stops the grid
    one = [k for k in frames if k[0] == "episode_000"]
    assert pq.episode_half_scores(coords[: len(one)], [episodes], rows, one, seed=3) is None
