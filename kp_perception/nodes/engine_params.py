"""The nodes' GPU engine parameters, named as Isaac ROS names them, read into one ``EngineSettings``.

Why a module of their own: the four parameters steer one thing, the engine a
GPU backend builds or loads (``kp_perception.backends.engine_settings``), for
the tensorrt backend and ONNX Runtime's TensorRT / CUDA providers alike. On
a CPU-only robot they change nothing. All are read-only: changing an engine
needs a restart (the model loads once).

    engine_file_path     ""     TensorRT engine file; "" = beside the model, named by precision
    enable_fp16          false  fp16 kernels (TensorRT); the engine's name and cache key say it
    force_engine_update  false  rebuild even when the engine is current
    workspace_size       1 GiB  TensorRT builder workspace (bytes)
"""

from __future__ import annotations

import rclpy.exceptions
from rclpy.node import Node

from kp_perception.backends.engine_settings import DEFAULT_WORKSPACE_BYTES, EngineSettings
from kp_perception.errors import ConfigError
from kp_perception.nodes.base import ParamSpec

ENGINE_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("engine_file_path", "", "TensorRT engine file (backend tensorrt; for onnxruntime's TensorRT "
              "provider it names the engine cache folder). Empty = beside the model, named by precision: "
              "model.fp16.engine / model.fp32.engine. An engine of the other precision is never rebuilt over: "
              "the wanted precision is built into its own file beside it."),
    ParamSpec("enable_fp16", False, "Let TensorRT use fp16 kernels (tensorrt backend and onnxruntime's TensorRT "
              "provider). Part of the engine's file name and cache key. No effect on CPU."),
    ParamSpec("force_engine_update", False, "Rebuild the TensorRT engine (or clear onnxruntime's TensorRT engine "
              "cache for this precision) at start even when it is current."),
    ParamSpec("workspace_size", DEFAULT_WORKSPACE_BYTES, "TensorRT builder workspace limit in bytes "
              "(tensorrt backend and onnxruntime's TensorRT provider).", int_range=(1 << 20, 1 << 40)),
)
ENGINE_PARAMETER_NAMES: tuple[str, ...] = tuple(spec.name for spec in ENGINE_PARAMETERS)


def declare_engine_parameters(node: Node) -> EngineSettings:
    """Declare the engine parameters on ``node`` (with descriptors) and read them; a bad value is a ConfigError."""
    values = {}
    for spec in ENGINE_PARAMETERS:
        try:
            values[spec.name] = node.declare_parameter(spec.name, spec.default, spec.descriptor()).value
        except (rclpy.exceptions.ParameterException, rclpy.exceptions.InvalidParameterValueException) as exc:
            raise ConfigError(f"parameter '{spec.name}': {exc}") from None
    return EngineSettings(
        engine_file_path=values["engine_file_path"],
        fp16=values["enable_fp16"],
        force_engine_update=values["force_engine_update"],
        workspace_size=values["workspace_size"],
    )
