"""Tetrominoes and MNIST-hard generators: masks, objects.csv and images agree with each other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from kp_perception_training.sim.mnist_hard import generate_mnist_hard, load_mnist
from kp_perception_training.sim.tetrominoes import COLOURS, SHAPES, generate_tetrominoes

pytestmark = pytest.mark.timeout(120)


def _read(folder: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    image = cv2.cvtColor(cv2.imread(str(folder / "images" / f"{stem}.png")), cv2.COLOR_BGR2RGB)
    mask = cv2.imread(str(folder / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    return image, mask


def _objects(folder: Path) -> dict[str, list]:
    """objects.csv read with the training-side reader, grouped by image stem."""
    from kp_perception_training.data.multi_object import read_objects_csv

    grouped: dict[str, list] = {}
    for rec in read_objects_csv(folder / "objects.csv"):
        grouped.setdefault(f"{rec.image:06d}", []).append(rec)
    return grouped


@pytest.fixture(scope="module")
def tetrominoes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tetrominoes")
    generate_tetrominoes(out, num=60, seed=0, show_progress=False)
    return out


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mnist")
    generate_mnist_hard(out, num=6, seed=0, show_progress=False)
    return out


def test_there_are_19_fixed_tetrominoes_of_four_cells():
    assert len(SHAPES) == 19
    assert all(grid.sum() == 4 for grid in SHAPES.values())
    keys = {(g.shape, g.tobytes()) for g in SHAPES.values()}
    assert len(keys) == 19  # all distinct


def test_tetromino_masks_agree_with_images_and_objects_csv(tetrominoes):
    objects = _objects(tetrominoes)
    assert len(objects) == 60
    for stem, records in objects.items():
        image, mask = _read(tetrominoes, stem)
        assert image.shape == (35, 35, 3) and mask.shape == (35, 35) and mask.dtype == np.uint8
        assert sorted(r.instance for r in records) == [1, 2, 3]
        assert set(np.unique(mask)) == {0, 1, 2, 3}
        assert (image[mask == 0] == 0).all(), "background is black"
        for r in records:
            pixels = image[mask == r.instance]
            assert r.color in COLOURS and r.shape in SHAPES
            assert (pixels == COLOURS[r.color]).all(), f"{stem} instance {r.instance} is not {r.color}"
            ys, xs = np.nonzero(mask == r.instance)
            assert abs(xs.mean() - r.x) < 1e-2 and abs(ys.mean() - r.y) < 1e-2


def test_whole_pieces_have_their_declared_shape_and_some_are_cut_off(tetrominoes):
    cell = 35 // 7
    whole = cut = 0
    for stem, records in _objects(tetrominoes).items():
        _, mask = _read(tetrominoes, stem)
        for r in records:
            ys, xs = np.nonzero(mask == r.instance)
            crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] == r.instance
            if len(xs) == 4 * cell * cell:
                whole += 1
                expected = np.kron(SHAPES[r.shape], np.ones((cell, cell), bool))
                assert crop.shape == expected.shape and (crop == expected).all(), f"{stem}: not a {r.shape}"
            else:
                cut += 1
                assert len(xs) < 4 * cell * cell
                touches = ys.min() == 0 or xs.min() == 0 or ys.max() == 34 or xs.max() == 34
                assert touches, "only pieces at the border may lose pixels"
    assert whole > 60 and cut > 10


def test_tetrominoes_are_deterministic_per_seed(tmp_path, tetrominoes):
    generate_tetrominoes(tmp_path / "a", num=3, seed=0, show_progress=False)
    generate_tetrominoes(tmp_path / "b", num=3, seed=1, show_progress=False)
    for stem in ("000000", "000001", "000002"):
        assert (tmp_path / "a" / "images" / f"{stem}.png").read_bytes() == (
            tetrominoes / "images" / f"{stem}.png"
        ).read_bytes()
    assert (tmp_path / "a" / "objects.csv").read_text().splitlines()[1:10] == (
        tetrominoes / "objects.csv"
    ).read_text().splitlines()[1:10]
    assert (tmp_path / "a" / "objects.csv").read_text() != (tmp_path / "b" / "objects.csv").read_text()


def test_tetromino_size_is_configurable(tmp_path):
    generate_tetrominoes(tmp_path, num=2, seed=0, size=70, show_progress=False)
    image, mask = _read(tmp_path, "000001")
    assert image.shape == (70, 70, 3) and set(np.unique(mask)) == {0, 1, 2, 3}


def test_mnist_hard_digits_are_real_mnist_digits_with_their_labels(mnist):
    digits, labels = load_mnist()
    crops_by_label: dict[int, set[bytes]] = {}
    for digit, label in zip(digits, labels, strict=True):
        ys, xs = np.nonzero(digit)
        crop = digit[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        crops_by_label.setdefault(int(label), set()).add(crop.shape[0].to_bytes(1, "little") + crop.tobytes())
    objects = _objects(mnist)
    assert len(objects) == 6
    for stem, records in objects.items():
        image, mask = _read(mnist, stem)
        assert image.shape == (80, 80, 3)
        assert (image[..., 0] == image[..., 1]).all() and (image[mask == 0] == 0).all()
        assert sorted(r.instance for r in records) == list(range(1, 10))
        for r in records:
            assert r.color == "white" and r.shape in {str(d) for d in range(10)}
            ys, xs = np.nonzero(mask == r.instance)
            assert abs(xs.mean() - r.x) < 1e-2 and abs(ys.mean() - r.y) < 1e-2
            box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
            crop = np.where(mask[box] == r.instance, image[..., 0][box], 0).astype(np.uint8)
            key = crop.shape[0].to_bytes(1, "little") + crop.tobytes()
            assert key in crops_by_label[int(r.shape)], f"{stem} instance {r.instance} is not an MNIST {r.shape}"


def test_multi_object_folders_load_in_the_training_dataset(tetrominoes, mnist):
    from kp_perception_training.data.multi_object import MultiObjectDataset

    for folder, count, objects in ((tetrominoes, 60, 3), (mnist, 6, 9)):
        dataset = MultiObjectDataset(folder)
        assert len(dataset) == count
        assert all(len(o) == objects for o in dataset.objects)
        item = dataset[0]
        assert int(item["mask"].max()) == objects


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kp_perception.cli.main", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_writes_tetrominoes_and_refuses_to_overwrite_without_flag(tmp_path):
    out = tmp_path / "t"
    result = _cli("sim", "tetrominoes", "--out", str(out), "--num", "4", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert len(list((out / "images").glob("*.png"))) == 4
    result = _cli("sim", "tetrominoes", "--out", str(out), "--num", "4")
    assert result.returncode == 2 and "--overwrite" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = _cli("sim", "tetrominoes", "--out", str(out), "--num", "2", "--overwrite")
    assert result.returncode == 0 and len(list((out / "images").glob("*.png"))) == 2


def test_cli_mnist_hard_help_and_bad_size(tmp_path):
    result = _cli("sim", "mnist-hard", "--help")
    assert result.returncode == 0 and "--digits" in result.stdout
    result = _cli("sim", "mnist-hard", "--out", str(tmp_path / "m"), "--num", "1", "--size", "20")
    assert result.returncode == 2 and "--size" in result.stderr and "Traceback" not in result.stderr
