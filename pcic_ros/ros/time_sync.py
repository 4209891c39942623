"""Pairing camera images with LiDAR scans by approximate time. Pure Python, no ROS.

Semantics are those of ROS 2's ApproximateTimeSynchronizer (message_filters, Python) for two
inputs, edge cases included: each input holds at most ``queue_size`` messages keyed by stamp (a
message with the stamp of a queued one replaces it; beyond the size the oldest *stamp* goes, which
may be the one that just arrived); a newly arrived message is paired with the queued message of the
other input closest to it in stamp, if their stamps differ by strictly less than ``slop`` (a gap of
exactly slop does not pair; on a tie the one queued first wins); paired messages leave the queues.

Unlike message_filters, no image is lost silently: one replaced or evicted is handed back in
``evicted_images``, and ``expire`` hands back the images that waited longer than slop + timeout (in
arrival time), so the encoder can still send them with the codec's no-scan fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from pcic_ros.errors import InvalidArgumentError

__all__ = ["Pair", "ApproximateTimePairer"]

ImageT = TypeVar("ImageT")
ScanT = TypeVar("ScanT")


@dataclass(frozen=True)
class Pair(Generic[ImageT, ScanT]):
    image_stamp_ns: int
    image: ImageT
    scan_stamp_ns: int
    scan: ScanT


@dataclass
class _Queued:
    stamp_ns: int
    item: object
    arrival_ns: int


class ApproximateTimePairer(Generic[ImageT, ScanT]):
    """Pairs images with scans whose stamps differ by less than ``slop_ns``.

    Args:
        queue_size: messages kept per input; the oldest stamp is evicted beyond it.
        slop_ns: stamps of a pair differ by less than this, in nanoseconds.
    """

    def __init__(self, queue_size: int, slop_ns: int) -> None:
        if queue_size < 1:
            raise InvalidArgumentError(f"queue_size must be at least 1, got {queue_size}")
        if slop_ns < 0:
            raise InvalidArgumentError(f"slop must not be negative, got {slop_ns} ns")
        self.queue_size = queue_size
        self.slop_ns = slop_ns
        # Keyed by stamp, in insertion order (a replaced stamp keeps its place), as message_filters' dicts.
        self._images: dict[int, _Queued] = {}
        self._scans: dict[int, _Queued] = {}
        self.evicted_images: list[tuple[int, ImageT]] = []
        """Images replaced or pushed out of a full queue before they paired or expired; the caller drains it."""

    def _closest(self, queue: dict[int, _Queued], stamp_ns: int) -> int | None:
        best_key, best_gap = None, None
        for key in queue:
            gap = abs(key - stamp_ns)
            if gap < self.slop_ns and (best_gap is None or gap < best_gap):
                best_key, best_gap = key, gap
        return best_key

    @staticmethod
    def _enqueue(queue: dict[int, _Queued], queued: _Queued, queue_size: int) -> list[_Queued]:
        """Queue a message; returns the ones it replaced or pushed out (oldest stamps first)."""
        dropped = [queue[queued.stamp_ns]] if queued.stamp_ns in queue else []
        queue[queued.stamp_ns] = queued
        while len(queue) > queue_size:
            dropped.append(queue.pop(min(queue)))
        return dropped

    def add_image(self, stamp_ns: int, image: ImageT, arrival_ns: int) -> Pair[ImageT, ScanT] | None:
        """Offer an image; returns its pair when a queued scan is within slop, else keeps it queued."""
        queued = _Queued(stamp_ns, image, arrival_ns)
        for dropped in self._enqueue(self._images, queued, self.queue_size):
            self.evicted_images.append((dropped.stamp_ns, dropped.item))  # type: ignore[arg-type]
        match = self._closest(self._scans, stamp_ns) if self._images.get(stamp_ns) is queued else None
        if match is None:
            return None
        del self._images[stamp_ns]
        scan = self._scans.pop(match)
        return Pair(stamp_ns, image, scan.stamp_ns, scan.item)  # type: ignore[arg-type]

    def add_scan(self, stamp_ns: int, scan: ScanT, arrival_ns: int) -> Pair[ImageT, ScanT] | None:
        """Offer a scan; returns its pair when a queued image is within slop, else keeps it queued."""
        queued = _Queued(stamp_ns, scan, arrival_ns)
        self._enqueue(self._scans, queued, self.queue_size)
        match = self._closest(self._images, stamp_ns) if self._scans.get(stamp_ns) is queued else None
        if match is None:
            return None
        del self._scans[stamp_ns]
        image = self._images.pop(match)
        return Pair(image.stamp_ns, image.item, stamp_ns, scan)  # type: ignore[arg-type]

    def expire(self, now_ns: int, timeout_ns: int) -> list[tuple[int, ImageT]]:
        """Remove and return (stamp, image) of the images that arrived more than slop + timeout
        before ``now_ns`` without a pair, oldest arrival first. Scans that old are dropped silently."""
        limit = now_ns - self.slop_ns - timeout_ns
        expired = [(key, q) for key, q in self._images.items() if q.arrival_ns < limit]
        for key, _ in expired:
            del self._images[key]
        for key in [key for key, q in self._scans.items() if q.arrival_ns < limit]:
            del self._scans[key]
        return [(q.stamp_ns, q.item) for _, q in expired]  # type: ignore[misc]

    @property
    def waiting_images(self) -> int:
        return len(self._images)
