"""Fixed-point evaluation of the networks that decide the entropy coder's distributions.

A learned codec decodes garbage when the decoder computes a slightly different scale than the encoder
did: the scale picks the CDF table, and one other table desynchronises the range decoder for the rest
of the frame. Floating-point convolutions are not reproducible across machines (summation order
depends on the thread count, the BLAS build, CPU or GPU). Following Balle et al., "Integer networks for
data compression with latent-variable models" (ICLR 2019), the hyper-synthesis, the Hyper Refiner and
the point-cloud branch are therefore evaluated in integer arithmetic when coding: every activation is
an integer A meaning A / 2**FRACTION_BITS, every kernel an integer per output channel times a scale.

The integers are held in float64 tensors: float64 represents every integer below 2**53 exactly, so
a convolution's sums are exact in any order, on any BLAS, on CPU and on CUDA (with cuDNN off, whose
Winograd and FFT algorithms are not sums of products). Between layers there are only element-wise
operations with one IEEE rounding each (a product, then ``round``), which every IEEE-754 machine
computes alike. The sigmoid of the attention blocks is a table, computed once with Python's
``decimal`` (correctly rounded, platform-independent). The modules' own ``forward`` code runs
unchanged: a ``TorchFunctionMode`` gives each torch operation on fixed-point values (the float64
tensors) its fixed-point meaning and refuses any operation it has no exact rule for; operations on
the float32 parameters alone (a masked convolution masking its kernel) run as they are.

A model marks the modules that decide its distributions with ``compute_in_fixed_point``: they run in
floating point while training and in fixed point otherwise, so that training is unchanged and every
bitstream is coded with the exact path.

This is not how the networks were trained (Balle et al. train integer networks as such); the rounding
of activations (2**-16) and kernels (12 bits per output channel) moves the entropy parameters a little,
and the cost in rate is measured in docs/determinism.md.
"""

from __future__ import annotations

import decimal
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["FRACTION_BITS", "WEIGHT_BITS", "FixedPointError", "evaluate", "compute_in_fixed_point"]

#: Activations are integers in units of 2**-FRACTION_BITS.
FRACTION_BITS = 16
#: Kernels are integers of at most this many magnitude bits, with one float scale per output channel.
WEIGHT_BITS = 12
_ONE = float(2**FRACTION_BITS)
#: Sums stay exact in float64 below 2**53; a margin of one bit catches growth before it is lost.
_EXACT_LIMIT = float(2**52)
#: The sigmoid table covers [-16, 16] in steps of 1/256; beyond it the sigmoid is 0 or 1 to 2**-23.
_SIGMOID_STEPS_PER_UNIT = 256
_SIGMOID_RANGE = 16


class FixedPointError(ArithmeticError):
    """A network used an operation without an exact rule, or grew past exact float64 integers."""


@functools.lru_cache(maxsize=1)
def _sigmoid_table() -> Tensor:
    """round(sigmoid(i / 256) * 2**FRACTION_BITS) for i in [-4096, 4096], the same on every machine."""
    half = _SIGMOID_RANGE * _SIGMOID_STEPS_PER_UNIT
    values = []
    with decimal.localcontext() as context:
        context.prec = 40
        for step in range(-half, half + 1):
            x = decimal.Decimal(step) / _SIGMOID_STEPS_PER_UNIT
            sigmoid = 1 / (1 + (-x).exp())
            values.append(int((sigmoid * int(_ONE)).to_integral_value(rounding=decimal.ROUND_HALF_EVEN)))
    return torch.tensor(values, dtype=torch.float64)


def _checked(values: Tensor) -> Tensor:
    if values.numel() and float(values.abs().max()) >= _EXACT_LIMIT:
        raise FixedPointError("a fixed-point value outgrew exact float64 integers (|x| >= 2**52)")
    return values


class _FixedPointMode(TorchFunctionMode):
    """Runs a module's forward on fixed-point float64 tensors (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self._kernels: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        self._biases: dict[int, Tensor] = {}
        self._rules: dict[Callable, Callable] = {
            torch.conv2d: self._conv2d,
            F.conv2d: self._conv2d,
            torch.conv_transpose2d: self._conv_transpose2d,
            F.conv_transpose2d: self._conv_transpose2d,
            F.relu: self._relu,
            F.leaky_relu: self._leaky_relu,
            torch.sigmoid: self._sigmoid,
            Tensor.add: self._add,
            Tensor.add_: self._add_,
            Tensor.mul: self._mul,
            # Exact as they are: they move or create values without arithmetic.
            torch.cat: torch.cat,
            torch.zeros_like: torch.zeros_like,
        }

    def __torch_function__(self, func: Callable, types: Sequence[type], args: tuple = (), kwargs: dict | None = None):
        kwargs = kwargs or {}
        if not _has_fixed_point_value((args, kwargs)):
            return func(*args, **kwargs)
        rule = self._rules.get(func)
        if rule is None:
            raise FixedPointError(f"no fixed-point rule for {getattr(func, '__qualname__', func)}")
        return rule(*args, **kwargs)

    def _kernel(self, weight: Tensor, output_dim: int) -> tuple[Tensor, Tensor]:
        """(integer kernel, scale per output channel); computed on the CPU, where the weights are the
        same bits on every machine, then moved to the device."""
        key = (id(weight), output_dim)
        if key not in self._kernels:
            kernel = weight.detach().cpu().double()
            other_dims = tuple(d for d in range(kernel.dim()) if d != output_dim)
            scale = kernel.abs().amax(dim=other_dims, keepdim=True) / float(2**WEIGHT_BITS - 1)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            values = torch.round(kernel / scale)
            channel_scale = scale.reshape(1, -1, 1, 1)
            self._kernels[key] = (values.to(self.device), channel_scale.to(self.device))
        return self._kernels[key]

    def _bias(self, bias: Tensor) -> Tensor:
        if id(bias) not in self._biases:
            fixed = torch.round(bias.detach().cpu().double() * _ONE).reshape(1, -1, 1, 1)
            self._biases[id(bias)] = fixed.to(self.device)
        return self._biases[id(bias)]

    def _requantize(self, sums: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
        out = torch.round(_checked(sums) * scale)
        if bias is not None:
            out = out + self._bias(bias)
        return _checked(out)

    def _conv2d(self, input: Tensor, weight: Tensor, bias: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
        """Arguments after the bias as ``torch.conv2d`` takes them (stride, padding, dilation, groups)."""
        values, scale = self._kernel(weight, output_dim=0)
        with torch.backends.cudnn.flags(enabled=False):
            sums = torch.conv2d(input, values, None, *args, **kwargs)
        return self._requantize(sums, scale, bias)

    def _conv_transpose2d(
        self, input: Tensor, weight: Tensor, bias: Tensor | None = None, *args: Any, **kwargs: Any
    ) -> Tensor:
        """Arguments after the bias as ``torch.conv_transpose2d`` takes them (stride, padding,
        output_padding, groups, dilation)."""
        if kwargs.get("groups", args[3] if len(args) > 3 else 1) != 1:
            # The kernel's output channels are then per group; one scale per channel would be wrong.
            raise FixedPointError("grouped transposed convolutions have no fixed-point rule")
        values, scale = self._kernel(weight, output_dim=1)
        with torch.backends.cudnn.flags(enabled=False):
            sums = torch.conv_transpose2d(input, values, None, *args, **kwargs)
        return self._requantize(sums, scale, bias)

    @staticmethod
    def _relu(input: Tensor, inplace: bool = False) -> Tensor:
        return torch.relu(input)

    @staticmethod
    def _leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
        return torch.where(input < 0, torch.round(input * negative_slope), input)

    def _sigmoid(self, input: Tensor) -> Tensor:
        table = _sigmoid_table().to(self.device)
        half = _SIGMOID_RANGE * _SIGMOID_STEPS_PER_UNIT
        # Dividing by a power of two is exact; the step index is then rounded once.
        steps = torch.round(input * (_SIGMOID_STEPS_PER_UNIT / _ONE)).clamp_(-half, half)
        return table[(steps + half).long()]

    @staticmethod
    def _add(input: Tensor, other: Any, alpha: float = 1) -> Tensor:
        if not isinstance(other, Tensor) or alpha != 1:
            raise FixedPointError("only the sum of two fixed-point tensors has a fixed-point rule")
        return _checked(input + other)

    @staticmethod
    def _add_(input: Tensor, other: Any, alpha: float = 1) -> Tensor:
        if not isinstance(other, Tensor) or alpha != 1:
            raise FixedPointError("only the sum of two fixed-point tensors has a fixed-point rule")
        return _checked(input.add_(other))

    @staticmethod
    def _mul(input: Tensor, other: Any) -> Tensor:
        if not isinstance(other, Tensor):
            raise FixedPointError("only the product of two fixed-point tensors has a fixed-point rule")
        return torch.round(_checked(input * other) / _ONE)


def _has_fixed_point_value(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.dtype == torch.float64
    if isinstance(value, (list, tuple)):
        return any(_has_fixed_point_value(item) for item in value)
    if isinstance(value, dict):
        return any(_has_fixed_point_value(item) for item in value.values())
    return False


def _to_fixed(value: Any) -> Any:
    if isinstance(value, Tensor):
        return torch.round(value.detach().double() * _ONE)
    return value


def _to_float(value: Any) -> Any:
    if isinstance(value, Tensor):
        return (value / _ONE).float()
    if isinstance(value, tuple):
        return type(value)(*map(_to_float, value)) if hasattr(value, "_fields") else tuple(map(_to_float, value))
    return value


_active = threading.local()


@torch.no_grad()
def evaluate(function: nn.Module | Callable, *inputs: Any, **kwargs: Any) -> Any:
    """``function(*inputs, **kwargs)`` (a module, or code that calls modules) in fixed point: tensor
    inputs are rounded to multiples of 2**-FRACTION_BITS, the result (a tensor, or a tuple / NamedTuple
    of tensors and None) comes back as float32. Identical bits on every machine for identical inputs
    and weights. Called inside another evaluation, it just runs ``function`` on the values as they are."""
    if getattr(_active, "mode", None) is not None:
        return function(*inputs, **kwargs)
    tensors = [value for value in (*inputs, *kwargs.values()) if isinstance(value, Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    fixed_inputs = [_to_fixed(value) for value in inputs]
    fixed_kwargs = {name: _to_fixed(value) for name, value in kwargs.items()}
    _active.mode = _FixedPointMode(device)
    try:
        with _active.mode:
            result = function(*fixed_inputs, **fixed_kwargs)
    finally:
        _active.mode = None
    return _to_float(result)


@functools.cache
def _fixed_point_class(base: type[nn.Module]) -> type[nn.Module]:
    def forward(self: nn.Module, *inputs: Any, **kwargs: Any) -> Any:
        if self.training:
            return base.forward(self, *inputs, **kwargs)
        return evaluate(functools.partial(base.forward, self), *inputs, **kwargs)

    attributes = {"forward": forward, "__doc__": base.__doc__, "computes_in_fixed_point": True}
    return type(f"FixedPoint{base.__name__}", (base,), attributes)


def compute_in_fixed_point(module: nn.Module) -> nn.Module:
    """Make ``module`` (in place) compute in fixed point whenever it is not training.

    The module's class becomes a subclass whose ``forward`` wraps the original in ``evaluate``;
    parameters, state-dict keys and training behaviour stay as they were, so checkpoints load as before.
    """
    if not getattr(module, "computes_in_fixed_point", False):
        module.__class__ = _fixed_point_class(type(module))
    return module
