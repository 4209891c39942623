"""Choosing the quality of each frame so the compressed stream stays under a target bitrate. Pure.

The budget is a token bucket: it fills at ``target_bps`` up to ``burst_s`` seconds' worth of bits, and
a frame is sent only when its whole size is in the bucket. Over any interval of T seconds the stream
therefore carries at most target_bps * (T + burst_s) bits, whatever the frame sizes.

Encoding is expensive, so the controller predicts each quality's size from the last frames coded at
it and tries the best quality predicted to fit; when the real size does not fit it falls back to
lower qualities, and drops the frame when even the lowest does not fit.
"""

from __future__ import annotations

__all__ = ["RateController"]

#: Weight of the newest size in a quality's running estimate: frames of one sequence change slowly.
_ESTIMATE_WEIGHT = 0.5


class RateController:
    """Token-bucket rate control over a ladder of qualities.

    Args:
        qualities: the qualities that may be used, any order; higher means more bits.
        target_bps: bits per second to stay under; 0 disables the budget (always the best quality).
        burst_s: seconds of budget the bucket holds; it starts full.
    """

    def __init__(self, qualities: list[int], target_bps: float, burst_s: float = 1.0) -> None:
        if not qualities:
            raise ValueError("at least one quality is needed")
        if target_bps < 0 or burst_s <= 0:
            raise ValueError(f"target_bps must be >= 0 and burst_s > 0, got {target_bps}, {burst_s}")
        self.qualities = sorted(set(qualities))
        self.target_bps = float(target_bps)
        self.capacity_bits = self.target_bps * burst_s
        self._bits = self.capacity_bits
        self._last_s: float | None = None
        self._estimates: dict[int, float] = {}

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

    def candidates(self, now_s: float) -> list[int]:
        """Qualities to try for a frame at ``now_s``, best first: those predicted to fit (a quality
        not yet seen is assumed to fit). Empty when the frame should be dropped without encoding."""
        if not self.limited:
            return [self.qualities[-1]]
        available = self.available_bits(now_s)
        return [q for q in reversed(self.qualities) if self._estimates.get(q, 0.0) <= available]

    def observe(self, quality: int, bits: int) -> None:
        """Record the size of a frame coded at ``quality``, sent or not."""
        previous = self._estimates.get(quality)
        self._estimates[quality] = bits if previous is None else previous + _ESTIMATE_WEIGHT * (bits - previous)

    def try_send(self, bits: int, now_s: float) -> bool:
        """Take ``bits`` from the bucket if they are all there; False leaves the bucket as it was."""
        if not self.limited:
            return True
        if bits > self.available_bits(now_s):
            return False
        self._bits -= bits
        return True
