"""Pairing camera images with LiDAR scans by approximate time. Pure Python, no ROS.

Semantics follow ROS's ApproximateTimeSynchronizer (message_filters, Python) for two inputs: each
input keeps its latest ``queue_size`` messages; a newly arrived message is paired with a queued
message of the other input whose stamp is within ``slop``; paired messages leave the queues. Where
several candidates qualify, the one closest in time is taken.

Unlike message_filters, an image is not silently lost when no scan comes: ``expire`` hands back the
images that waited longer than slop + timeout (in arrival time), so the encoder can still send them
with the codec's no-scan fallback.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

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
    """Pairs images with scans whose stamps differ by at most ``slop_ns``.

    Args:
        queue_size: messages kept per input; the oldest arrival is evicted beyond it.
        slop_ns: largest stamp difference of a pair, in nanoseconds.
    """

    def __init__(self, queue_size: int, slop_ns: int) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        if slop_ns < 0:
            raise ValueError(f"slop must not be negative, got {slop_ns} ns")
        self.queue_size = queue_size
        self.slop_ns = slop_ns
        # Keyed by an arrival counter: two messages with one stamp are both kept, as in message_filters.
        self._images: OrderedDict[int, _Queued] = OrderedDict()
        self._scans: OrderedDict[int, _Queued] = OrderedDict()
        self._arrivals = 0
        self.evicted_images: list[tuple[int, ImageT]] = []
        """Images pushed out of a full queue before they paired or expired; the caller drains it."""

    def _closest(self, queue: OrderedDict[int, _Queued], stamp_ns: int) -> int | None:
        best_key, best_gap = None, None
        for key, queued in queue.items():
            gap = abs(queued.stamp_ns - stamp_ns)
            if gap <= self.slop_ns and (best_gap is None or gap < best_gap):
                best_key, best_gap = key, gap
        return best_key

    def _enqueue(self, queue: OrderedDict[int, _Queued], queued: _Queued) -> _Queued | None:
        self._arrivals += 1
        queue[self._arrivals] = queued
        if len(queue) > self.queue_size:
            return queue.popitem(last=False)[1]
        return None

    def add_image(self, stamp_ns: int, image: ImageT, arrival_ns: int) -> Pair[ImageT, ScanT] | None:
        """Offer an image; returns its pair when a queued scan is within slop, else queues it."""
        match = self._closest(self._scans, stamp_ns)
        if match is not None:
            scan = self._scans.pop(match)
            return Pair(stamp_ns, image, scan.stamp_ns, scan.item)  # type: ignore[arg-type]
        evicted = self._enqueue(self._images, _Queued(stamp_ns, image, arrival_ns))
        if evicted is not None:
            self.evicted_images.append((evicted.stamp_ns, evicted.item))  # type: ignore[arg-type]
        return None

    def add_scan(self, stamp_ns: int, scan: ScanT, arrival_ns: int) -> Pair[ImageT, ScanT] | None:
        """Offer a scan; returns its pair when a queued image is within slop, else queues it."""
        match = self._closest(self._images, stamp_ns)
        if match is not None:
            image = self._images.pop(match)
            return Pair(image.stamp_ns, image.item, stamp_ns, scan)  # type: ignore[arg-type]
        self._enqueue(self._scans, _Queued(stamp_ns, scan, arrival_ns))
        return None

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
