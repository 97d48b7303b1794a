"""The typed training config: typos and wrong types are one line naming the key, defaults live once.

Every case goes through the real ``kp-perception train ... --print-config``,
which loads the config exactly as training does and stops before any data
is read, so each check costs milliseconds.
"""

from __future__ import annotations

import logging

import pytest
import yaml

from kp_perception.cli.main import main
from kp_perception.errors import ConfigError
from kp_perception_training.config import build_config, config_from_saved, load_config
from kp_perception_training.pyramids.config import PyramidsConfig


def _one_line_error(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _print_config(capsys, *argv: str) -> dict:
    assert main(["train", *argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize(
    "text, key",
    [
        ("modle: {width: 8}\n", "'modle'"),
        ("optim: {lrr: 0.001}\n", "'optim.lrr'"),
        ("data: {imag_size: 64}\n", "'data.imag_size'"),
        ("loss: {sprng: 2.0}\n", "'loss.sprng'"),
        ("model: {widht: 8}\n", "'model.widht'"),
        ("ablation: {no_sprng: true}\n", "'ablation.no_sprng'"),
    ],
)
def test_a_typo_in_any_yaml_section_is_one_line_naming_the_key(tmp_path, capsys, text, key):
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    err = _one_line_error(capsys, ["train", "pyramids", "--config", str(path), "--print-config"], key, str(path))
    assert "unknown config key" in err


def test_a_typo_suggests_the_key_it_resembles(tmp_path, capsys):
    _one_line_error(capsys, ["train", "pyramids", "--set", "loss.sprng=2", "--print-config"],
                    "'loss.sprng'", "did you mean 'spring'?")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lr=abc", "optim.lr must be float, got 'abc'"),
        ("loss.spring=abc", "loss.spring must be float, got 'abc'"),
        ("model.keypoints_per_level=abc", "model.keypoints_per_level must be a list of int or int, got 'abc'"),
        ("model.width=wide", "model.width must be int, got 'wide'"),
        ("train.amp=maybe", "train.amp must be bool, got 'maybe'"),
        ("data.image_size=[64]", "data.image_size must be int or [int, int], got [64]"),
        ("train.steps=0", "train.steps must be >= 1, got 0"),
    ],
)
def test_a_wrong_type_from_set_is_one_line_naming_the_key_and_type(capsys, override, expected):
    err = _one_line_error(capsys, ["train", "pyramids", "--set", override, "--print-config"], expected)
    assert f"--set {override}" in err


def test_a_wrong_type_in_yaml_names_the_file_and_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("decoder:\n  transport_channels: [64, wide]\n")
    _one_line_error(capsys, ["train", "pyramids", "--config", str(path), "--print-config"],
                    str(path), "decoder.transport_channels must be a list of int")


def test_an_empty_yaml_is_refused_instead_of_training_on_defaults(tmp_path, capsys):
    for text in ("", "# only a comment\n", "{}\n"):
        path = tmp_path / "empty.yaml"
        path.write_text(text)
        _one_line_error(capsys, ["train", "pyramids", "--config", str(path), "--print-config"],
                        str(path), "empty", "leave out --config")


def test_per_level_lists_are_checked_together_at_load(capsys):
    err = _one_line_error(capsys, ["train", "pyramids", "--set", "model.keypoints_per_level=[5,10,20]",
                                   "--print-config"], "model.keypoints_per_level has 3 level(s)")
    assert "loss.transport_weights has 2" in err and "decoder.transport_channels has 2" in err
    config = _print_config(capsys, "pyramids", "--set", "model.keypoints_per_level=[5,10,20]",
                           "loss.transport_weights=[0.1,0.5,1]", "decoder.transport_channels=[64,48,32]")
    assert config["model"]["keypoints_per_level"] == [5, 10, 20]


def test_the_resolved_config_lists_every_key_once_with_the_dataclass_defaults(capsys):
    config = _print_config(capsys, "pyramids")
    assert config == PyramidsConfig().to_dict()
    # The paper's values, from the one place they are written.
    assert config["model"]["keypoints_per_level"] == [10, 20] and config["loss"]["transport_weights"] == [0.1, 1.0]
    assert config["model"]["sigma"] == 0.1 and config["optim"]["lr"] == 1e-4
    flat = _print_config(capsys, "keynet")
    assert flat["model"]["keypoints_per_level"] == [30] and "ablation" not in flat
    tusk = _print_config(capsys, "tusk")  # the TUSK default is the Tetrominoes preset over the reference values
    assert tusk["optim"]["lr"] == 3e-3 and tusk["loss"]["kmeans"] == 0.01 and tusk["prototypes"]["restart_every"] == 25


def test_a_preset_changes_only_what_it_lists(capsys):
    base = _print_config(capsys, "tusk", "--config", "tusk_tetrominoes")
    mnist = _print_config(capsys, "tusk", "--config", "tusk_mnist_hard")
    assert mnist["model"]["num_keypoints"] == 9 and mnist["data"]["tps"] == "mnist"
    assert mnist["optim"] == base["optim"] and mnist["loss"]["kmeans"] == base["loss"]["kmeans"]


def test_an_old_tusk_decoder_key_is_moved_with_a_warning(caplog):
    saved = {"model": {"num_keypoints": 3}, "decoder": {"kind": "rgba", "hidden": 48}}
    with caplog.at_level(logging.WARNING):
        config = config_from_saved("tusk", saved, "old/config.yaml")
    assert config.decoder.rgba.hidden == 48
    assert "'decoder.hidden' is now 'decoder.rgba.hidden'" in caplog.text


def test_a_key_whose_meaning_is_gone_is_refused_with_how_to_fix_it(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("base: tusk_tetrominoes\ndecoder: {kind: rgba, hidden: 64, num_frequencies: 4, extent: 0.6}\n")
    _one_line_error(capsys, ["train", "tusk", "--config", str(path), "--print-config"],
                    "'decoder.num_frequencies' is from an older version", "delete the key", "retrain")


def test_a_saved_config_from_an_older_version_fills_new_keys_with_a_warning(caplog):
    old = PyramidsConfig().to_dict()
    del old["model"]["detach_conditioning"]
    del old["ablation"]
    with caplog.at_level(logging.WARNING):
        config = config_from_saved("pyramids", old, "RUN/last.pt")
    assert config == PyramidsConfig()
    assert "RUN/last.pt" in caplog.text and "model.detach_conditioning=False" in caplog.text
    assert "ablation.no_spring=False" in caplog.text


def test_configs_are_frozen_and_compare_by_value():
    a = build_config(PyramidsConfig, {"optim": {"lr": 1}})
    assert a.optim.lr == 1.0 and isinstance(a.optim.lr, float)  # an int where a float is expected is fine
    with pytest.raises(AttributeError):
        a.optim.lr = 2.0  # type: ignore[misc]
    assert a == load_config("pyramids", overrides=["optim.lr=1.0"])
    with pytest.raises(ConfigError, match="'train.stpes'"):
        load_config("pyramids", overrides=["train.stpes=3"])
