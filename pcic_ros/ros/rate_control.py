"""Choosing the quality of each frame so the compressed stream stays under a target bitrate. Pure.

The budget is a token bucket: it fills at ``target_bps`` up to ``burst_s`` seconds' worth of bits, and
a frame is sent only when its whole size is in the bucket. Over any interval of T seconds the stream
therefore carries at most target_bps * (T + burst_s) bits, whatever the frame sizes.

Encoding is expensive, so the controller predicts a frame's size at every quality and tries the best
quality predicted to fit; when the real size does not fit it tries again lower, and drops the frame
when even the lowest quality is predicted not to fit. The knob is either a ladder of whole qualities
(single-rate models, one network per step) or a continuous range (variable-rate models).

The size model is log2(bits) linear in quality: ``bits(q) = reference * 2 ** (slope * (q - highest))``.
The reference follows the frames coded (content changes slowly within a sequence); the slope starts at
what the shipped hyper-vr measured on the validation frames (bpp 0.24, 0.35, 0.48, 0.65, 0.84, 1.09 at
q = 0..5: 0.37 to 0.56 octaves per quality) and is refined whenever one frame is coded at two qualities.
"""

from __future__ import annotations

import math

from pcic_ros.errors import InvalidArgumentError

__all__ = ["RateController"]

#: Weight of the newest measurement in the running estimates: frames of one sequence change slowly.
_ESTIMATE_WEIGHT = 0.5
#: Octaves of size per unit of quality before any frame was coded twice (see the module docstring).
_DEFAULT_SLOPE = 0.45
#: A measured slope is kept within these bounds, so that one odd frame cannot stall the search.
_SLOPE_BOUNDS = (0.1, 2.0)
#: On a continuous knob a first try aims this far under the bits available: frame sizes wander, and a
#: frame that does not fit costs another encode; what a frame leaves stays in the bucket for the next.
#: (A ladder's steps are coarse: aiming under would swap the step that fits for a mix of its neighbours.)
_AIM = 0.9
#: On a continuous knob: a retry is at least this much lower, and qualities are chosen on this grid.
_CONTINUOUS_STEP = 0.25
_CONTINUOUS_GRID = 0.05
#: On a continuous knob a frame is coded at most this many times (the last try is the lowest quality).
_CONTINUOUS_TRIES = 3


class RateController:
    """Token-bucket rate control over a quality knob.

    Args:
        lowest, highest: the qualities rate control may use; higher means more bits.
        target_bps: bits per second to stay under; 0 disables the budget (always ``highest``).
        burst_s: seconds of budget the bucket holds; it starts full.
        continuous: any quality in [lowest, highest] (a variable-rate model); otherwise the whole
            numbers from lowest to highest.
    """

    def __init__(
        self, lowest: float, highest: float, target_bps: float, burst_s: float = 1.0, continuous: bool = False
    ) -> None:
        if not lowest <= highest:
            raise InvalidArgumentError(f"the lowest quality must not exceed the highest, got {lowest} and {highest}")
        if not continuous and not (float(lowest).is_integer() and float(highest).is_integer()):
            raise InvalidArgumentError(f"a ladder of qualities runs between whole numbers, got {lowest} and {highest}")
        if target_bps < 0 or burst_s <= 0:
            raise InvalidArgumentError(f"target_bps must be >= 0 and burst_s > 0, got {target_bps}, {burst_s}")
        self.lowest, self.highest, self.continuous = float(lowest), float(highest), continuous
        self.target_bps = float(target_bps)
        self.capacity_bits = self.target_bps * burst_s
        self.slope = _DEFAULT_SLOPE
        self._bits = self.capacity_bits
        self._last_s: float | None = None
        self._reference: float | None = None
        self._frame: list[tuple[float, int]] = []

    @property
    def limited(self) -> bool:
        return self.target_bps > 0

    def available_bits(self, now_s: float) -> float:
        """Bits that may be sent at ``now_s`` (refills the bucket up to now)."""
        if self._last_s is not None and now_s > self._last_s:
            self._bits = min(self.capacity_bits, self._bits + (now_s - self._last_s) * self.target_bps)
        if self._last_s is None or now_s > self._last_s:
            self._last_s = now_s
        return self._bits if self.limited else float("inf")

    def choose(self, now_s: float, below: float | None = None) -> float | None:
        """The quality to code a frame at ``now_s`` with: the best predicted to fit (the highest while
        nothing is known). ``below`` is the quality just tried for this frame and found too large; the
        next choice is lower. None: drop the frame without coding it (again)."""
        if below is None:
            self._frame = []
        if not self.limited:
            return self.highest if below is None else None
        ceiling = self.highest if below is None else below - (_CONTINUOUS_STEP if self.continuous else 1.0)
        available = self.available_bits(now_s)
        if self._reference is None or available <= 0:
            fitting = ceiling if self._reference is None else -math.inf
        else:
            aim = available * (_AIM if self.continuous and below is None else 1.0)
            fitting = self.highest + math.log2(aim / self._reference) / self.slope
        quality = min(ceiling, fitting)
        if self.continuous and len(self._frame) == _CONTINUOUS_TRIES - 1:
            quality = min(quality, self.lowest)
        grid = _CONTINUOUS_GRID if self.continuous else 1.0
        # The small tolerance keeps a quality that fits exactly from rounding down a step.
        quality = self.lowest + math.floor((quality - self.lowest) / grid + 1e-9) * grid
        return round(quality, 6) if quality >= self.lowest else None

    def observe(self, quality: float, bits: int) -> None:
        """Record the size of a frame coded at ``quality``, sent or not."""
        for previous_quality, previous_bits in self._frame:
            if previous_quality != quality and previous_bits > 0 and bits > 0:
                measured = math.log2(previous_bits / bits) / (previous_quality - quality)
                measured = min(max(measured, _SLOPE_BOUNDS[0]), _SLOPE_BOUNDS[1])
                self.slope += _ESTIMATE_WEIGHT * (measured - self.slope)
        self._frame.append((quality, bits))
        reference = max(bits, 1) * 2.0 ** (self.slope * (self.highest - quality))
        if self._reference is None or len(self._frame) > 1:
            # A retry measured this very frame: its size is the best guide to the next try.
            self._reference = reference
        else:
            self._reference += _ESTIMATE_WEIGHT * (reference - self._reference)

    def try_send(self, bits: int, now_s: float) -> bool:
        """Take ``bits`` from the bucket if they are all there; False leaves the bucket as it was."""
        if not self.limited:
            return True
        if bits > self.available_bits(now_s):
            return False
        self._bits -= bits
        return True
