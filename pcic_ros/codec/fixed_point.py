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
computes alike. Sigmoid, GELU and the exponential of softmax are tables, computed once with
Python's ``decimal`` (exact to 40 digits, platform-independent); a softmax divides by an exact sum.
The modules' own ``forward`` code runs unchanged: a ``TorchFunctionMode`` gives each torch operation
on fixed-point values (the float64 tensors) its fixed-point meaning and refuses any operation it has
no exact rule for; operations on the float32 parameters alone (a masked convolution masking its
kernel) run as they are.

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
#: Tables step 1/256 of their input, interpolated linearly in between. The sigmoid table covers
#: [-16, 16] (beyond, the sigmoid is 0 or 1 to 2**-23), the normal CDF of GELU [-8, 8] (beyond, 0 or 1
#: to 2**-49), exp [-32, 0] (below, 0 to 2**-46).
_STEPS_PER_UNIT = 256
_SIGMOID_RANGE = 16
_NORMAL_CDF_RANGE = 8
_EXP_RANGE = 32


class FixedPointError(ArithmeticError):
    """A network used an operation without an exact rule, or grew past exact float64 integers."""


def _table(function: Callable[[decimal.Decimal], decimal.Decimal], low: int, high: int) -> Tensor:
    """round(function(i / 256) * 2**FRACTION_BITS) for i / 256 in [low, high], as float64."""
    values = []
    with decimal.localcontext() as context:
        context.prec = 40
        for step in range(low * _STEPS_PER_UNIT, high * _STEPS_PER_UNIT + 1):
            value = function(decimal.Decimal(step) / _STEPS_PER_UNIT) * int(_ONE)
            values.append(int(value.to_integral_value(rounding=decimal.ROUND_HALF_EVEN)))
    return torch.tensor(values, dtype=torch.float64)


def _erf(x: decimal.Decimal) -> decimal.Decimal:
    """erf by its Maclaurin series (``decimal`` has no erf); 40 digits hold the largest terms at
    |x| <= 8 / sqrt(2) with 20 digits to spare."""
    total, term, n = decimal.Decimal(0), x, 0
    while True:
        addend = term / (2 * n + 1)
        total += addend
        if abs(addend) < decimal.Decimal(10) ** -25:
            break
        n += 1
        term = -term * x * x / n
    return total * 2 / _SQRT_PI


_SQRT_PI = decimal.Decimal("1.772453850905516027298167483341145182798")


@functools.lru_cache(maxsize=1)
def _sigmoid_table() -> Tensor:
    return _table(lambda x: 1 / (1 + (-x).exp()), -_SIGMOID_RANGE, _SIGMOID_RANGE)


@functools.lru_cache(maxsize=1)
def _normal_cdf_table() -> Tensor:
    return _table(lambda x: (1 + _erf(x / decimal.Decimal(2).sqrt())) / 2, -_NORMAL_CDF_RANGE, _NORMAL_CDF_RANGE)


@functools.lru_cache(maxsize=1)
def _exp_table() -> Tensor:
    """exp(-i / 256) for i in 0 .. 32 * 256, index i."""
    return _table(lambda x: (-x).exp(), 0, _EXP_RANGE)


def _lookup(table: Tensor, input: Tensor, low: int, high: int) -> Tensor:
    """The table's function at each fixed-point input, interpolated linearly between the entries of the
    table covering [low, high] and clamped at its ends. Every step is exact but the last rounding:
    dividing by a power of two, the floor, the fraction (at most 8 bits) times an integer difference."""
    position = (input * (_STEPS_PER_UNIT / _ONE)).clamp_(low * _STEPS_PER_UNIT, high * _STEPS_PER_UNIT)
    position.sub_(low * _STEPS_PER_UNIT)
    index = torch.floor(position).clamp_(max=table.numel() - 2)
    fraction = position.sub_(index)
    table = table.to(input.device)
    lower_index = index.long()
    lower, upper = table[lower_index], table[lower_index + 1]
    return upper.sub_(lower).mul_(fraction).add_(lower).round_()


def _magnitude(values: Tensor) -> float:
    """max |values|, in one pass without a temporary (``abs().max()`` allocates a copy)."""
    if not values.numel():
        return 0.0
    low, high = torch.aminmax(values)
    return max(-float(low), float(high))


def _exact_magnitude(values: Tensor) -> float:
    """max |values|, raising FixedPointError when it is past exact float64 integers."""
    largest = _magnitude(values)
    if largest >= _EXACT_LIMIT:
        raise FixedPointError("a fixed-point value outgrew exact float64 integers (|x| >= 2**52)")
    return largest


def _checked(values: Tensor) -> Tensor:
    _exact_magnitude(values)
    return values


#: A float64 convolution runs as im2col and dgemm. On a whole frame the im2col buffer (input channels x
#: kernel area x output pixels x 8 bytes) is hundreds of MB and the convolution waits on memory;
#: convolving a band of output rows at a time keeps it in cache, 2 to 4 times faster on the CPU. The
#: bits are the same: every output is the same exact sum, whichever band computes it.
_BAND_BYTES = 2**22


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _banded_conv2d(
    input: Tensor,
    kernel: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """``torch.conv2d(input, kernel, None, stride, padding, dilation, groups)``, a band of output rows
    at a time on the CPU (see ``_BAND_BYTES``)."""
    if input.device.type != "cpu" or isinstance(padding, str) or input.dim() != 4:
        # On a GPU the whole-frame buffer is cheap and many small launches are not; string paddings
        # ("same") are rare enough to run whole.
        return torch.conv2d(input, kernel, None, stride, padding, dilation, groups)
    (stride_y, stride_x), (dilation_y, dilation_x) = _pair(stride), _pair(dilation)
    pad_y, pad_x = _pair(padding)
    kernel_h, kernel_w = kernel.shape[-2:]
    height, width = input.shape[-2:]
    reach_y = dilation_y * (kernel_h - 1) + 1
    out_h = (height + 2 * pad_y - reach_y) // stride_y + 1
    out_w = (width + 2 * pad_x - dilation_x * (kernel_w - 1) - 1) // stride_x + 1
    row_bytes = input.shape[0] * kernel[0].numel() * max(out_w, 1) * input.element_size()
    band = max(1, _BAND_BYTES // row_bytes)
    if band >= out_h or pad_y >= reach_y:
        # One band, or a padding so wide that whole bands would lie in it: as it is.
        return torch.conv2d(input, kernel, None, stride, padding, dilation, groups)
    out = input.new_empty(input.shape[0], kernel.shape[0], out_h, out_w)
    for first in range(0, out_h, band):
        last = min(out_h, first + band)
        # The band's input rows in padded coordinates, then in the input's: a band at an edge takes its
        # zero rows from padding only itself (no padded copy of the whole input).
        top, bottom = first * stride_y - pad_y, (last - 1) * stride_y + reach_y - pad_y
        rows = input[:, :, max(top, 0) : min(bottom, height)]
        rows = F.pad(rows, (pad_x, pad_x, max(-top, 0), max(bottom - height, 0)))
        out[:, :, first:last] = torch.conv2d(rows, kernel, None, stride, 0, dilation, groups)
    return out


class _FixedPointMode(TorchFunctionMode):
    """Runs a module's forward on fixed-point float64 tensors (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self._kernels: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        self._biases: dict[int, Tensor] = {}
        self._largest_constants: dict[int, float] = {}
        self._rules: dict[Callable, Callable] = {
            torch.conv2d: self._conv2d,
            F.conv2d: self._conv2d,
            torch.conv_transpose2d: self._conv_transpose2d,
            F.conv_transpose2d: self._conv_transpose2d,
            F.relu: self._relu,
            F.leaky_relu: self._leaky_relu,
            torch.sigmoid: self._sigmoid,
            F.gelu: self._gelu,
            Tensor.softmax: self._softmax,
            torch.softmax: self._softmax,
            F.softmax: self._softmax,
            Tensor.add: self._add,
            Tensor.add_: self._add_,
            Tensor.mul: self._mul,
            Tensor.matmul: self._matmul,
            torch.matmul: self._matmul,
        }
        # Exact as they are: they move, select or create values without arithmetic.
        data_movement = (
            torch.cat, torch.zeros_like, F.pixel_shuffle, torch.pixel_shuffle, F.pixel_unshuffle,
            torch.pixel_unshuffle, Tensor.__getitem__, Tensor.__setitem__,
            Tensor.reshape, Tensor.view, Tensor.transpose, Tensor.permute, Tensor.contiguous, Tensor.chunk,
            Tensor.split, Tensor.new_zeros, Tensor.size, Tensor.dim,
        )  # fmt: skip
        for function in data_movement:
            self._rules[function] = function

    def __torch_function__(self, func: Callable, types: Sequence[type], args: tuple = (), kwargs: dict | None = None):
        kwargs = kwargs or {}
        if not _has_fixed_point_value((args, kwargs)):
            return func(*args, **kwargs)
        rule = self._rules.get(func)
        if rule is None and getattr(func, "__name__", "") == "__get__":
            rule = func  # reading an attribute such as .shape
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
        """round(sums * scale) + bias, in place on ``sums`` (a fresh convolution output)."""
        largest_sum = _exact_magnitude(sums)
        out = sums.mul_(scale).round_()
        if bias is not None:
            fixed_bias = self._bias(bias)
            out.add_(fixed_bias)
            # A second pass over the output only when the bound from the sums cannot rule out growth.
            bound = largest_sum * self._largest(scale) + self._largest(fixed_bias) + 1
            if bound >= _EXACT_LIMIT:
                _checked(out)
        return out

    def _largest(self, constant: Tensor) -> float:
        """max |constant| of a cached kernel scale or bias."""
        key = id(constant)
        if key not in self._largest_constants:
            self._largest_constants[key] = _magnitude(constant)
        return self._largest_constants[key]

    def _conv2d(self, input: Tensor, weight: Tensor, bias: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
        """Arguments after the bias as ``torch.conv2d`` takes them (stride, padding, dilation, groups)."""
        values, scale = self._kernel(weight, output_dim=0)
        with torch.backends.cudnn.flags(enabled=False):
            sums = _banded_conv2d(input, values, *args, **kwargs)
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
        return input.clamp_(min=0) if inplace else torch.relu(input)

    @staticmethod
    def _leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
        return torch.where(input < 0, torch.mul(input, negative_slope).round_(), input)

    @staticmethod
    def _sigmoid(input: Tensor) -> Tensor:
        return _lookup(_sigmoid_table(), input, -_SIGMOID_RANGE, _SIGMOID_RANGE)

    @staticmethod
    def _gelu(input: Tensor, approximate: str = "none") -> Tensor:
        if approximate != "none":
            raise FixedPointError("only the exact GELU has a fixed-point rule")
        cdf = _lookup(_normal_cdf_table(), input, -_NORMAL_CDF_RANGE, _NORMAL_CDF_RANGE)
        return _checked(cdf.mul_(input)).div_(_ONE).round_()

    @staticmethod
    def _softmax(input: Tensor, dim: int | None = None, *args: Any, **kwargs: Any) -> Tensor:
        if dim is None:
            raise FixedPointError("softmax needs its dimension")
        # exp(x - max) from the table (the exponent is <= 0), normalised by an exact sum.
        exponent = input - input.amax(dim=dim, keepdim=True)
        powers = _lookup(_exp_table(), -exponent, 0, _EXP_RANGE)
        return torch.round(powers * _ONE / powers.sum(dim=dim, keepdim=True))

    @staticmethod
    def _matmul(input: Tensor, other: Tensor) -> Tensor:
        return _checked(torch.matmul(input, other)).div_(_ONE).round_()

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
        return _checked(torch.mul(input, other)).div_(_ONE).round_()


def _has_fixed_point_value(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.dtype == torch.float64
    if isinstance(value, (list, tuple)):
        return any(_has_fixed_point_value(item) for item in value)
    if isinstance(value, dict):
        return any(_has_fixed_point_value(item) for item in value.values())
    return False


def _to_fixed(value: Any) -> Any:
    if isinstance(value, Tensor) and value.is_floating_point():
        return torch.round(value.detach().double() * _ONE)
    return value


def _to_float(value: Any) -> Any:
    if isinstance(value, Tensor) and value.dtype == torch.float64:
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
