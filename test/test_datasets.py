"""Datasets over cached sequences, splits by sequence, and the multi-object folder format."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kp_perception.errors import ConfigError, DataError
from kp_perception.preprocessing import resize_rgb
from kp_perception_training.data.datasets import FrameDataset, FramePairDataset, load_cached_sequences
from kp_perception_training.data.multi_object import MultiObjectDataset, read_objects_csv
from kp_perception_training.data.pair_sampler import PairSampler
from kp_perception_training.data.splits import split_sequences
from test.fixtures_bags import smooth_frames, write_bag, write_image_folder

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def two_sequences(tmp_path):
    a = smooth_frames(6, 24, 32, seed=1)
    b = smooth_frames(4, 48, 64, seed=2)
    write_bag(tmp_path / "data" / "ep_a", a, storage="mcap", encoding="png")
    write_image_folder(tmp_path / "data" / "ep_b", b)
    loaded = load_cached_sequences([tmp_path / "data"], size=(16, 12), cache_dir=tmp_path / "cache", progress=False)
    return loaded, (a, b)


def test_load_cached_sequences_returns_each_sequence_with_its_cache(two_sequences):
    loaded, (a, b) = two_sequences
    assert [(seq.name, cache.shape) for seq, cache in loaded] == [("ep_a", (6, 12, 16, 3)), ("ep_b", (4, 12, 16, 3))]
    np.testing.assert_array_equal(loaded[1][1][3], resize_rgb(b[3], 16, 12))


def test_frame_dataset_items_are_float_images_with_their_origin(two_sequences):
    loaded, (a, b) = two_sequences
    ds = FrameDataset(loaded)
    assert len(ds) == 10
    item = ds[7]
    assert (item["sequence"], item["frame"]) == (1, 1)
    image = item["image"]
    assert image.shape == (3, 12, 16) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    expected = torch.from_numpy(resize_rgb(b[1], 16, 12)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image, expected)
    with pytest.raises(IndexError):
        ds[10]


def test_pair_dataset_through_dataloader_gives_pairs_within_the_gap(two_sequences):
    loaded, _ = two_sequences
    caches = [c for _, c in loaded]
    ds = FramePairDataset(loaded, max_ref_gap=2, seed=0)
    loader = DataLoader(ds, batch_size=4, sampler=ds.pair_sampler)
    seen = 0
    for epoch in range(2):
        ds.set_epoch(epoch)
        for batch in loader:
            assert batch["image"].shape[1:] == (3, 12, 16) and batch["ref"].shape == batch["image"].shape
            for i in range(len(batch["sequence"])):
                s, f, r = (int(batch[k][i]) for k in ("sequence", "frame", "ref_frame"))
                assert r != f and abs(r - f) <= 2
                ref = torch.from_numpy(np.array(caches[s][r])).permute(2, 0, 1).float() / 255
                torch.testing.assert_close(batch["ref"][i], ref)
                seen += 1
    assert seen == 20


def test_pair_dataset_integer_index_draws_a_fresh_reference_each_time(two_sequences):
    loaded, _ = two_sequences
    ds = FramePairDataset(loaded, PairSampler([6, 4], max_ref_gap=3, seed=4))
    item = ds[8]
    assert (item["sequence"], item["frame"]) == (1, 2)
    refs = [ds[6]["ref_frame"] for _ in range(60)]  # sequence 1, frame 0: references 1..3
    assert set(refs) == {1, 2, 3}
    torch.manual_seed(11)
    first = [ds[i]["ref_frame"] for i in range(10)]
    torch.manual_seed(11)
    assert [ds[i]["ref_frame"] for i in range(10)] == first  # reproducible under a seeded generator
    with pytest.raises(DataError, match="do not match"):
        FramePairDataset(loaded, PairSampler([5, 4]))


# --- splits ------------------------------------------------------------------------------------


def test_splits_are_by_sequence_and_never_share_one():
    names = [f"episode_{i:03d}" for i in range(23)]
    splits = split_sequences(names, (0.7, 0.2, 0.1), seed=1)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [16, 5, 2]
    assigned = splits["train"] + splits["val"] + splits["test"]
    assert sorted(assigned) == sorted(names) and len(set(assigned)) == len(names)


def test_splits_are_deterministic_and_independent_of_input_order():
    names = [f"s{i}" for i in range(10)]
    assert split_sequences(names, seed=3) == split_sequences(list(reversed(names)), seed=3)
    assert split_sequences(names, seed=3) != split_sequences(names, seed=4)


@pytest.mark.parametrize("n, expected", [(1, [1, 0, 0]), (2, [1, 1, 0]), (3, [1, 1, 1]), (5, [3, 1, 1])])
def test_few_sequences_still_give_each_split_one_when_possible(n, expected):
    splits = split_sequences([f"s{i}" for i in range(n)], (0.8, 0.1, 0.1))
    assert [len(splits[k]) for k in ("train", "val", "test")] == expected


def test_two_fractions_give_train_and_val_only():
    splits = split_sequences(["a", "b", "c", "d"], (0.75, 0.25))
    assert set(splits) == {"train", "val"} and (len(splits["train"]), len(splits["val"])) == (3, 1)


def test_bad_split_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="repeated: a"):
        split_sequences(["a", "a", "b"])
    with pytest.raises(ConfigError, match="fractions"):
        split_sequences(["a"], (0.5, -0.1, 0.6))


# --- multi-object folders ----------------------------------------------------------------------


def _write_multi_object(folder, n=2, size=(20, 16)):
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows = ["image,instance,shape,color,x,y"]
    w, h = size
    for i in range(n):
        image = np.zeros((h, w, 3), np.uint8)
        mask = np.zeros((h, w), np.uint8)
        image[2:8, 3:9] = (255, 0, 0)
        mask[2:8, 3:9] = 1
        image[9:14, 11 + i : 17 + i] = (0, 255, 255)
        mask[9:14, 11 + i : 17 + i] = 2
        cv2.imwrite(str(folder / "images" / f"{i:06d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / "masks" / f"{i:06d}.png"), mask)
        rows += [f"{i},1,square,red,5.5,4.5", f"{i:06d}.png,2,bar,cyan,{13.5 + i},11.0"]
    (folder / "objects.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_multi_object_items_hold_image_mask_and_objects(tmp_path):
    ds = MultiObjectDataset(_write_multi_object(tmp_path / "tetro"))
    assert len(ds) == 2
    item = ds[1]
    assert item["index"] == 1 and item["image"].shape == (3, 16, 20) and item["mask"].dtype == torch.int64
    assert set(item["mask"].unique().tolist()) == {0, 1, 2}
    # Red where instance 1 is, cyan where instance 2 is.
    assert torch.allclose(item["image"][:, item["mask"] == 1].mean(1), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(item["image"][:, item["mask"] == 2].mean(1), torch.tensor([0.0, 1.0, 1.0]))
    assert [(o.instance, o.shape, o.color, o.x) for o in ds.objects[1]] == [(1, "square", "red", 5.5),
                                                                            (2, "bar", "cyan", 14.5)]


def test_multi_object_resize_keeps_instance_ids(tmp_path):
    ds = MultiObjectDataset(_write_multi_object(tmp_path / "tetro"), size=40)
    item = ds[0]
    assert item["image"].shape == (3, 40, 40) and item["mask"].shape == (40, 40)
    assert set(item["mask"].unique().tolist()) == {0, 1, 2}


def test_multi_object_missing_parts_are_clear_errors(tmp_path):
    folder = _write_multi_object(tmp_path / "m")
    (folder / "masks" / "000001.png").unlink()
    with pytest.raises(DataError, match=r"masks: missing masks for 1 images, e.g. 000001\.png"):
        MultiObjectDataset(folder)
    (folder / "objects.csv").unlink()
    with pytest.raises(DataError, match=r"m: missing objects\.csv"):
        MultiObjectDataset(folder)
    with pytest.raises(DataError, match="no such multi-object dataset folder"):
        MultiObjectDataset(tmp_path / "absent")


def test_objects_csv_errors_name_the_line(tmp_path):
    bad = tmp_path / "objects.csv"
    bad.write_text("image,instance,shape\n")
    with pytest.raises(DataError, match="header must be image,instance,shape,color,x,y"):
        read_objects_csv(bad)
    bad.write_text("image,instance,shape,color,x,y\n0,1,square,red,1.0,2.0\n0,two,bar,cyan,3,4\n")
    with pytest.raises(DataError, match=r"objects\.csv:3: malformed row"):
        read_objects_csv(bad)
