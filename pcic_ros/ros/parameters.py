"""Node parameters from one table per node, as ffmpeg_image_transport declares its own: each entry has
a name, a default (whose type is the parameter's), a description and, where it has one, a range or a
set of choices. ``declare_parameters`` declares a table in a loop and returns its values as a frozen
dataclass; the ranges show in ``ros2 param describe`` and are checked with the parameter's name. The
parameter files in config/ and the launch files are tested against these tables.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from pcic_ros.errors import InvalidArgumentError

__all__ = ["ParameterSpec", "declare_parameters", "qos_parameters", "qos_profile", "RELEASE_MEMORY"]

_INT64 = (-(2**63), 2**63 - 1)
_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter: ``low``..``high`` is inclusive (None: unbounded on that side); ``choices`` lists
    the values a string parameter may take."""

    name: str
    default: bool | int | float | str | list[float]
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    def descriptor(self) -> ParameterDescriptor:
        description = self.description + (f" (one of {', '.join(self.choices)})" if self.choices else "")
        # A float parameter also takes an integer (``target_bitrate:=2000000`` on the ros2 launch
        # command line is one, and rclpy refuses it for a DOUBLE); rclpy then checks no range, ``check`` does.
        floating = isinstance(self.default, float)
        descriptor = ParameterDescriptor(description=description, dynamic_typing=floating)
        if self.low is None and self.high is None:
            return descriptor
        if floating:
            # float() matters: rosidl packs a float64 field's int as raw bits unless told to check.
            low = -math.inf if self.low is None else float(self.low)
            high = math.inf if self.high is None else float(self.high)
            descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high)]
        elif isinstance(self.default, int) and not isinstance(self.default, bool):
            low = _INT64[0] if self.low is None else int(self.low)
            high = _INT64[1] if self.high is None else int(self.high)
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=0)]
        return descriptor

    def check(self, value: Any) -> Any:
        """``value`` as this parameter's type, or InvalidArgumentError naming the parameter."""
        if isinstance(self.default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidArgumentError(f"parameter {self.name} must be a number, got {value!r}")
            value = float(value)
        if self.low is not None and not value >= self.low:
            raise InvalidArgumentError(f"parameter {self.name} must be at least {self.low:g}, got {value!r}")
        if self.high is not None and not value <= self.high:
            raise InvalidArgumentError(f"parameter {self.name} must be at most {self.high:g}, got {value!r}")
        if self.choices and value not in self.choices:
            raise InvalidArgumentError(f"parameter {self.name} must be one of {', '.join(self.choices)}, got {value!r}")
        return value


def declare_parameters(node: Node, table: Sequence[ParameterSpec], class_name: str) -> Any:
    """Declare every parameter of ``table`` on ``node`` and return their values as a frozen dataclass
    named ``class_name`` with one field per parameter."""
    values = {
        spec.name: spec.check(node.declare_parameter(spec.name, spec.default, spec.descriptor()).value)
        for spec in table
    }
    fields = [(spec.name, type(spec.default)) for spec in table]
    return dataclasses.make_dataclass(class_name, fields, frozen=True)(**values)


def qos_parameters(prefix: str, reliability: str, depth: int, what: str) -> tuple[ParameterSpec, ParameterSpec]:
    """``<prefix>_reliability`` and ``<prefix>_depth``, the QoS of ``what``."""
    return (
        ParameterSpec(f"{prefix}_reliability", reliability, f"QoS reliability of {what}", choices=tuple(_RELIABILITY)),
        ParameterSpec(f"{prefix}_depth", depth, f"QoS history depth of {what}", low=1),
    )


def qos_profile(reliability: str, depth: int) -> QoSProfile:
    """The QoS profile of a ``qos_parameters`` pair's values."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=_RELIABILITY[reliability],
        durability=DurabilityPolicy.VOLATILE,
    )


#: The ``release_memory`` parameter of both nodes.
RELEASE_MEMORY = ParameterSpec(
    "release_memory",
    True,
    "after each frame, give the heap pages it freed back to the kernel (malloc_trim): resident memory stays "
    "flat for a few percent of coding time; false keeps glibc's default, under which it creeps up",
)
