"""The kind registry is the one list of model kinds: everything that names kinds reads it."""

from __future__ import annotations

import argparse

import pytest

from kp_perception import checkpoint, sidecar
from kp_perception.errors import ConfigError
from kp_perception.kinds import DETECTIONS, KIND_NAMES, KINDS, PYRAMID, get_kind, resolve
from kp_perception.nodes import launch_args


def _subcommand_choices(name: str) -> tuple[str, ...]:
    from kp_perception.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    kind = next(a for a in sub.choices[name]._actions if a.dest == "kind")
    return tuple(kind.choices)


def test_every_reader_of_kinds_sees_the_registry():
    assert checkpoint.KINDS == KIND_NAMES == sidecar.KINDS
    assert set(sidecar.HIERARCHY_KINDS) == {k for k, v in KINDS.items() if v.family == PYRAMID}
    assert _subcommand_choices("train") == KIND_NAMES
    # Each kind with a shipped model has a demo; `servo` is the closed-loop demo on top of pyramids.
    assert _subcommand_choices("demo") == (*(k for k, v in KINDS.items() if v.shipped_model), "servo")
    assert set(launch_args.NODES.values()) == {v.node.executable for v in KINDS.values()}


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_each_kind_resolves_to_an_encoder_method_evaluator_config_and_node(kind):
    from kp_perception.models import build_encoder
    from kp_perception_training.config import load_config
    from kp_perception_training.methods import resolve_evaluator, resolve_method

    entry = get_kind(kind)
    method = resolve_method(kind)
    assert method.kind == kind and callable(resolve_evaluator(kind))
    config = load_config(kind)  # the kind's default config loads and checks
    assert isinstance(config, method.config_class)
    import torch

    encoder = build_encoder(kind, config.model).eval()
    width, height = config.data.size_wh
    with torch.no_grad():
        out = encoder.infer(torch.rand(1, 3, height, width))
    expected = {"keypoints", "scores"} | ({"descriptors", "prototype_ids"} if entry.family == DETECTIONS else set())
    assert expected <= set(out)
    assert entry.node.executable in ("pyramids_node", "tusk_node")
    assert (launch_args.default_params_file(entry.node.name)).endswith(f"config/{entry.node.name}.yaml")


def test_unknown_kinds_are_one_clear_error():
    with pytest.raises(ConfigError, match="unknown model kind 'yolo'.*pyramids"):
        get_kind("yolo")
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        resolve("kp_perception.kinds:Nope", "test")
