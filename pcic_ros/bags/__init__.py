"""``pcic bag``: KITTI drive -> rosbag2 (MCAP), play a bag into ROS, record topics, decode offline.

- ``from-kitti`` writes camera Image (rgb8, rectified camera 2), CameraInfo, PointCloud2 and /tf_static
  (conventions in ``pcic_ros.bags.messages``). Stamps come from the drive's ``timestamps.txt`` files when
  present; a drive without them (like the one in ../shared/data) is spaced at 0.1 s, the 10 Hz of the
  KITTI recording, starting at midnight UTC of the drive's date.
- ``play`` and ``record`` go through a real rclpy node and move serialized CDR bytes untouched.
- ``decode`` decodes recorded CompressedFrame messages with ``pcic_ros.codec.api`` and writes PNGs and a CSV.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from tqdm import tqdm

from pcic_ros.bags import messages as bm
from pcic_ros.codec.projection import Calibration, CalibrationError
from pcic_ros.errors import InvalidArgumentError
from pcic_ros.experiments.datasets import DataError, discover_frames
from pcic_ros.ros.messages import (
    CameraInfoError,
    carried_calibration,
    image_to_rgb,
    pointcloud2_to_points,
    stamp_to_ns,
)
from pcic_ros.ros.tf_buffer import TransformBuffer, TransformError, frame_calibration

__all__ = [
    "IMAGE_TOPIC",
    "CAMERA_INFO_TOPIC",
    "POINTS_TOPIC",
    "TF_STATIC_TOPIC",
    "KITTI_FRAME_PERIOD_NS",
    "DecodedFrame",
    "from_kitti",
    "play",
    "record",
    "decode",
    "add_parser",
]

IMAGE_TOPIC = "/camera/image_rect"
CAMERA_INFO_TOPIC = "/camera/camera_info"
POINTS_TOPIC = "/lidar/points"
TF_STATIC_TOPIC = "/tf_static"

#: KITTI raw was recorded at 10 Hz; drives without timestamps files are spaced by this.
KITTI_FRAME_PERIOD_NS = 100_000_000


def _open_writer(out: Path) -> Writer:
    if out.exists():
        raise InvalidArgumentError(f"{out} already exists; give a new bag folder")
    writer = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    return writer


# --- from-kitti -------------------------------------------------------------------------------------


def _serialize(message: object, msgtype: str) -> bytes:
    """CDR bytes of ``message`` padded with zeros to a multiple of 4, as rmw_fastrtps delivers them, so
    that a played-back and re-recorded message is byte for byte the one in the bag."""
    data = bm.bag_typestore().serialize_cdr(message, msgtype)
    return bytes(data) + bytes(-len(data) % 4)


def _parse_kitti_timestamp(text: str) -> int:
    """Nanoseconds since the epoch of a KITTI stamp such as '2011-09-26 13:02:25.964389445' (UTC)."""
    whole, _, fraction = text.strip().partition(".")
    moment = datetime.datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp()) * 1_000_000_000 + int((fraction + "000000000")[:9])


def _sensor_stamps(sensor_dir: Path, names: Sequence[str], grid: Sequence[int]) -> list[int]:
    """Stamps of the frames ``names`` (KITTI indices) from ``sensor_dir/timestamps.txt``, or ``grid``."""
    stamps_file = sensor_dir / "timestamps.txt"
    if not stamps_file.is_file():
        return list(grid)
    lines = [line for line in stamps_file.read_text().splitlines() if line.strip()]
    stamps = []
    for name in names:
        index = int(name)
        if index >= len(lines):
            raise DataError(f"{stamps_file}: no stamp for frame {name}")
        stamps.append(_parse_kitti_timestamp(lines[index]))
    return stamps


def from_kitti(drive: str | Path, out: str | Path, max_frames: int | None = None, first_frame: int = 0) -> int:
    """Write a KITTI raw drive folder (``<date>/<drive>``) as a rosbag2 MCAP bag; returns the frame count."""
    drive = Path(drive)
    # The left colour camera (image_02), whose timestamps the bag's image stamps come from.
    frames = [
        f
        for f in discover_frames(drive.parent)
        if f.layout == "kitti_raw" and f.sequence == drive.name and f.camera == 2
    ]
    frames = frames[first_frame:]
    if max_frames is not None:
        frames = frames[:max_frames]
    if not frames:
        raise DataError(f"no KITTI raw frames in {drive}")
    date = datetime.datetime.strptime(drive.parent.name, "%Y_%m_%d").replace(tzinfo=datetime.timezone.utc)
    start = int(date.timestamp()) * 1_000_000_000
    names = [f.name for f in frames]
    grid = [start + int(name) * KITTI_FRAME_PERIOD_NS for name in names]
    image_stamps = _sensor_stamps(drive / "image_02", names, grid)
    scan_stamps = _sensor_stamps(drive / "velodyne_points", names, grid)

    calibration = frames[0].calibration()
    typestore = bm.bag_typestore()
    writer = _open_writer(Path(out))
    try:
        tf_static = writer.add_connection(TF_STATIC_TOPIC, bm.TF_MESSAGE_TYPE, typestore=typestore)
        camera_info = writer.add_connection(CAMERA_INFO_TOPIC, bm.CAMERA_INFO_TYPE, typestore=typestore)
        image = writer.add_connection(IMAGE_TOPIC, bm.IMAGE_TYPE, typestore=typestore)
        points = writer.add_connection(POINTS_TOPIC, bm.POINT_CLOUD_TYPE, typestore=typestore)
        first = min(image_stamps[0], scan_stamps[0])
        transform = bm.tf_static_message(bm.camera_from_lidar(calibration), first)
        writer.write(tf_static, first, _serialize(transform, bm.TF_MESSAGE_TYPE))
        for frame, image_stamp, scan_stamp in tqdm(
            list(zip(frames, image_stamps, scan_stamps, strict=True)), desc="frames", unit="frame"
        ):
            pixels = frame.image()
            height, width = pixels.shape[:2]
            info = bm.camera_info_message(calibration, height, width, image_stamp)
            timed = [
                (image_stamp, camera_info, _serialize(info, bm.CAMERA_INFO_TYPE)),
                (image_stamp, image, _serialize(bm.image_message(pixels, image_stamp), bm.IMAGE_TYPE)),
                (
                    scan_stamp,
                    points,
                    _serialize(bm.point_cloud_message(frame.scan(), scan_stamp), bm.POINT_CLOUD_TYPE),
                ),
            ]
            for stamp_ns, connection, data in sorted(timed, key=lambda item: item[0]):
                writer.write(connection, stamp_ns, data)
    finally:
        writer.close()
    return len(frames)


# --- ROS side (play, record) -----------------------------------------------------------------------


def _existing_bag(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    return path


def _ros_message_class(msgtype: str) -> type:
    """The rclpy message class of 'pkg/msg/Name'; ImportError when its package is not installed."""
    package, _, name = msgtype.split("/")
    module = importlib.import_module(f"{package}.msg")
    return getattr(module, name)


def _qos(reliable: bool, transient_local: bool, depth: int) -> object:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE,
    )


class _RosSession:
    """rclpy initialised for one node, shut down on exit; SIGINT/SIGTERM only set ``stop_requested``
    so that the caller leaves its loop and closes files cleanly."""

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self.stop_requested = False

    def __enter__(self) -> _RosSession:
        import rclpy
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(self.node_name)
        self._previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _request_stop(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    def __exit__(self, *exc: object) -> None:
        import rclpy

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self.node.destroy_node()
        rclpy.shutdown()


def play(
    bag: str | Path,
    rate: float = 1.0,
    topics: Iterable[str] | None = None,
    loop: bool = False,
    reliable: bool = True,
    depth: int = 100,
    wait_for_subscribers: float = 0.0,
    min_subscribers: dict[str, int] | None = None,
    progress: bool = True,
) -> int:
    """Publish a bag's messages on their topics, paced by their receive times divided by ``rate``.

    Messages go out as the recorded CDR bytes, so header stamps and every field are unchanged. /tf_static
    is published transient-local, as tf2 expects. Topics whose message package rclpy cannot import
    are skipped with a log line. ``wait_for_subscribers`` seconds are allowed for every topic to get its
    subscribers before the first message: one each, or ``min_subscribers[topic]`` (a scan that both the
    encoder and the decoder read needs two; one would let playback start before the decoder listens).
    Returns the number of messages published."""
    if rate <= 0:
        raise InvalidArgumentError(f"--rate must be positive, got {rate}")
    wanted = set(topics) if topics else None
    with _RosSession("pcic_bag_play") as ros, Reader(_existing_bag(bag)) as reader:
        logger = ros.node.get_logger()
        publishers = {}
        for connection in reader.connections:
            if (wanted is not None and connection.topic not in wanted) or connection.topic in publishers:
                continue
            try:
                message_class = _ros_message_class(connection.msgtype)
            except (ImportError, AttributeError, ValueError):
                logger.warning(f"skipping {connection.topic}: rclpy has no type {connection.msgtype} installed")
                continue
            qos = _qos(reliable or connection.topic == TF_STATIC_TOPIC, connection.topic == TF_STATIC_TOPIC, depth)
            publishers[connection.topic] = ros.node.create_publisher(message_class, connection.topic, qos)
        absent = (wanted or set()) - {c.topic for c in reader.connections}
        if absent:
            logger.warning(f"not in the bag: {', '.join(sorted(absent))}")
        if not publishers:
            raise InvalidArgumentError(f"{bag}: nothing to play")
        unknown = set(min_subscribers or {}) - set(publishers)
        if unknown:
            raise InvalidArgumentError(f"--subscribers names topics that are not played: {', '.join(sorted(unknown))}")
        wanted_counts = {topic: (min_subscribers or {}).get(topic, 1) for topic in publishers}
        _wait_for_subscribers(ros, publishers, wanted_counts, wait_for_subscribers)
        connections = [c for c in reader.connections if c.topic in publishers]
        count = sum(c.msgcount for c in connections)
        published = 0
        with tqdm(total=count, desc="play", unit="msg", disable=not progress) as bar:
            while not ros.stop_requested:
                wall_start = time.monotonic()
                bag_start = None
                for connection, timestamp, data in reader.messages(connections=connections):
                    if bag_start is None:
                        bag_start = timestamp
                    delay = wall_start + (timestamp - bag_start) / 1e9 / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    if ros.stop_requested:
                        break
                    publishers[connection.topic].publish(bytes(data))
                    published += 1
                    bar.update()
                if not loop:
                    break
                bar.reset()
        if reliable:
            for publisher in publishers.values():
                publisher.wait_for_all_acked(_duration(5.0))
    return published


def _duration(seconds: float) -> object:
    from rclpy.duration import Duration

    return Duration(nanoseconds=int(seconds * 1e9))


def _wait_for_subscribers(ros: _RosSession, publishers: dict, counts: dict[str, int], timeout: float) -> None:
    def short() -> list[str]:
        return [topic for topic, publisher in publishers.items() if publisher.get_subscription_count() < counts[topic]]

    deadline = time.monotonic() + timeout
    while not ros.stop_requested and time.monotonic() < deadline:
        if not short():
            return
        time.sleep(0.05)
    lonely = short()
    if timeout > 0 and lonely:
        found = ", ".join(f"{t} ({publishers[t].get_subscription_count()} of {counts[t]})" for t in lonely)
        ros.node.get_logger().warning(f"too few subscribers after {timeout:g} s on: {found}")


@dataclass
class _TopicRecorder:
    """Raw subscription callback: writes each message's bytes, logged at the time it is handed over.

    That is not the middleware's receive stamp: a reliable reader holds back samples that arrived
    after a lost one until the repair comes, so receive stamps can run backwards, and the bag (read in
    log-time order) would then reorder the topic."""

    writer: Writer
    connection: object
    on_message: Callable[[], None]

    def __call__(self, data: bytes) -> None:
        self.writer.write(self.connection, time.time_ns(), data)
        self.on_message()


def record(
    out: str | Path,
    topics: Sequence[str],
    duration: float | None = None,
    max_messages: int | None = None,
    depth: int = 100,
    progress: bool = True,
) -> int:
    """Record ``topics`` into a new MCAP bag until SIGINT/SIGTERM, ``duration`` seconds or ``max_messages``.

    Each topic is subscribed once a publisher of it is seen, with the publishers' QoS (reliable and
    transient-local only when every publisher offers it, as rosbag2 does), and its type definition is
    taken from the bag typestore (ROS 2 Kilted plus pcic_ros messages). Returns the number of messages."""
    import rclpy

    if not topics:
        raise InvalidArgumentError("give at least one topic to record")
    typestore = bm.bag_typestore()
    writer = _open_writer(Path(out))
    count = 0
    try:
        with _RosSession("pcic_bag_record") as ros:
            bar = tqdm(desc="record", unit="msg", disable=not progress)

            def counted() -> None:
                nonlocal count
                count += 1
                bar.update()

            logger = ros.node.get_logger()
            pending = list(dict.fromkeys(topics))
            logger.info(f"waiting for publishers on {', '.join(pending)}")
            subscriptions = []
            started = time.monotonic()
            while not ros.stop_requested:
                if pending:
                    pending = _subscribe_discovered(ros, writer, typestore, pending, subscriptions, counted, depth)
                rclpy.spin_once(ros.node, timeout_sec=0.05)
                if max_messages is not None and count >= max_messages:
                    break
                if duration is not None and time.monotonic() - started >= duration:
                    break
            bar.close()
            if pending:
                logger.warning(f"never saw a publisher on: {', '.join(pending)}")
            for subscription in subscriptions:
                ros.node.destroy_subscription(subscription)
    finally:
        writer.close()
    return count


def _subscribe_discovered(
    ros: _RosSession,
    writer: Writer,
    typestore: object,
    pending: list[str],
    subscriptions: list,
    on_message: Callable[[], None],
    depth: int,
) -> list[str]:
    """Subscribe to the pending topics that now have a publisher; returns those still pending."""
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    logger = ros.node.get_logger()
    known = dict(ros.node.get_topic_names_and_types())
    still_pending = []
    for topic in pending:
        publishers = ros.node.get_publishers_info_by_topic(topic)
        if topic not in known or not publishers:
            still_pending.append(topic)
            continue
        msgtype = known[topic][0]
        try:
            message_class = _ros_message_class(msgtype)
            connection = writer.add_connection(topic, msgtype, typestore=typestore)
        except (ImportError, AttributeError, KeyError, ValueError) as error:
            logger.error(f"cannot record {topic} ({msgtype}): {error}")
            continue
        reliable = all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers)
        transient = all(p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in publishers)
        callback = _TopicRecorder(writer, connection, on_message)
        subscriptions.append(
            ros.node.create_subscription(message_class, topic, callback, _qos(reliable, transient, depth), raw=True)
        )
        logger.info(f"recording {topic} ({msgtype})")
    return still_pending


# --- decode ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedFrame:
    """One CSV row of ``pcic bag decode``."""

    stamp_ns: int
    bytes: int
    bpp: float
    zeros_fallback: bool
    scan: str
    psnr: float | None
    decode_ms: float | None
    png: str
    error: str

    @property
    def ok(self) -> bool:
        return not self.error


_CSV_COLUMNS = ["stamp", "bytes", "bpp", "zeros_fallback", "scan", "psnr_db", "decode_ms", "png", "error"]


def _format_stamp(nanoseconds: int) -> str:
    return f"{nanoseconds // 1_000_000_000}.{nanoseconds % 1_000_000_000:09d}"


class _BagIndex:
    """Serialized messages of one or more bags, looked up by type and header stamp."""

    def __init__(self, bags: Iterable[Path], msgtypes: Iterable[str]) -> None:
        self.typestore = bm.bag_typestore()
        self.by_type: dict[str, list[tuple[str, bytes]]] = {t: [] for t in msgtypes}
        for bag in bags:
            with Reader(bag) as reader:
                connections = [c for c in reader.connections if c.msgtype in self.by_type]
                if not connections:  # rosbags reads every message when given none
                    continue
                for connection, _, data in reader.messages(connections=connections):
                    self.by_type[connection.msgtype].append((connection.topic, bytes(data)))

    def messages(self, msgtype: str) -> list[tuple[str, object]]:
        return [(topic, self.typestore.deserialize_cdr(data, msgtype)) for topic, data in self.by_type[msgtype]]

    def by_stamp(self, msgtype: str, topic: str | None = None) -> dict[int, list[tuple[str, bytes]]]:
        """Header stamp -> [(frame_id, serialized)] of the type (on ``topic`` when given)."""
        index: dict[int, list[tuple[str, bytes]]] = {}
        for message_topic, data in self.by_type[msgtype]:
            if topic is not None and message_topic != topic:
                continue
            message = self.typestore.deserialize_cdr(data, msgtype)
            index.setdefault(stamp_to_ns(message.header.stamp), []).append((message.header.frame_id, data))
        return index


def _bag_transforms(index: _BagIndex) -> TransformBuffer:
    """Every transform of the bags' /tf_static, as the nodes' TF buffer holds them."""
    transforms = TransformBuffer()
    for _, tf_message in index.messages(bm.TF_MESSAGE_TYPE):
        for transform in tf_message.transforms:
            transforms.add(transform, static=True)
    return transforms


def _bag_calibration(index: _BagIndex, transforms: TransformBuffer, frame: object) -> Calibration:
    """A CompressedFrame's calibration from the bags' CameraInfo and /tf_static, built as the nodes
    build it (``frame_calibration``)."""
    camera_frame = frame.header.frame_id
    infos = [m for _, m in index.messages(bm.CAMERA_INFO_TYPE) if m.header.frame_id == camera_frame]
    if not infos:
        raise CalibrationError(f"no CameraInfo of frame '{camera_frame}' in the bag(s); give --calib")
    scan_stamp = stamp_to_ns(frame.scan_stamp)
    try:
        return frame_calibration(
            infos[0], transforms, camera_frame, frame.scan_frame_id, scan_stamp, int(frame.width), int(frame.height)
        )
    except (CameraInfoError, TransformError) as error:
        raise CalibrationError(f"no usable calibration for camera '{camera_frame}' in the bag(s): {error}") from None


class _FrameInputs:
    """What decoding a CompressedFrame needs besides its bytes, looked up in the bag(s): the scan of
    its stamp and its calibration (the one it carries, else ``calibration``, else the bags' CameraInfo
    and /tf_static, each built once per camera and LiDAR frame)."""

    def __init__(self, index: _BagIndex, calibration: Calibration | None) -> None:
        self.index = index
        self.calibration = calibration
        self.scans = index.by_stamp(bm.POINT_CLOUD_TYPE)
        self._calibrations: dict[tuple, Calibration | CalibrationError] = {}
        self._transforms: TransformBuffer | None = None

    def _bag_calibration(self, message: object) -> Calibration | CalibrationError:
        key = (message.header.frame_id, message.scan_frame_id, message.width, message.height)
        if key not in self._calibrations:
            self._transforms = self._transforms or _bag_transforms(self.index)
            try:
                self._calibrations[key] = _bag_calibration(self.index, self._transforms, message)
            except CalibrationError as error:
                self._calibrations[key] = error
        return self._calibrations[key]

    def of(self, message: object) -> tuple[np.ndarray | None, Calibration | CalibrationError | None, str]:
        """(scan, calibration or the reason there is none, what became of the scan) of a frame."""
        if message.zeros_fallback:
            return None, None, "not used (zeros fallback)"
        scan_stamp = stamp_to_ns(message.scan_stamp)
        same_stamp = self.scans.get(scan_stamp, [])
        # Prefer the scan of the named LiDAR frame; any scan of that stamp serves when none is named.
        candidates = [raw for frame_id, raw in same_stamp if frame_id == message.scan_frame_id] or [
            raw for _, raw in same_stamp
        ]
        if not candidates:
            return None, None, f"missing (no PointCloud2 stamped {_format_stamp(scan_stamp)})"
        scan = pointcloud2_to_points(self.index.typestore.deserialize_cdr(candidates[0], bm.POINT_CLOUD_TYPE))
        try:
            carried = carried_calibration(message)
        except CalibrationError as error:
            return scan, error, "paired"
        if carried is not None:
            return scan, carried, "paired"
        return scan, self.calibration or self._bag_calibration(message), "paired"


def _compressed_frames(bag: Path) -> list[object]:
    """The bag's CompressedFrame messages, read with the definition the bag recorded."""
    with Reader(bag) as reader:
        typestore = bm.reader_typestore(reader.connections)
        connections = [c for c in reader.connections if c.msgtype == bm.COMPRESSED_FRAME_TYPE]
        # rosbags reads every message when given no connections.
        compressed = [
            typestore.deserialize_cdr(bytes(data), bm.COMPRESSED_FRAME_TYPE)
            for _, _, data in (reader.messages(connections=connections) if connections else ())
        ]
    if not compressed:
        raise DataError(f"{bag}: no {bm.COMPRESSED_FRAME_TYPE} messages")
    return compressed


def decode(
    bag: str | Path,
    out_dir: str | Path,
    scans_bag: str | Path | None = None,
    calibration: Calibration | None = None,
    device: str | None = None,
    originals_topic: str = IMAGE_TOPIC,
    progress: bool = True,
    video: str | Path | None = None,
) -> list[DecodedFrame]:
    """Decode every CompressedFrame in ``bag`` into ``out_dir/<sec>.<nanosec>.png`` plus ``frames.csv``.

    Each frame is paired with the PointCloud2 whose header stamp (and frame id) is the frame's
    ``scan_stamp`` (``scan_frame_id``), looked for in ``bag`` and ``scans_bag``. The calibration is the
    one the frame carries (the encoder's exact numbers); for frames of older recordings, which carry
    none, ``calibration`` when given, else the bag's CameraInfo and /tf_static. PSNR is computed against
    the Image of the same stamp on ``originals_topic`` when the bag(s) hold it (only that topic: a base
    station's decoded images carry the camera's stamps too). A frame that cannot be decoded gets a row
    whose ``error`` says why. ``video`` (.mp4 or .avi) also writes the original above the decoded
    frame, with stamp, bpp and PSNR drawn on, at the stream's frame rate."""
    from pcic_ros.codec.api import Codec
    from pcic_ros.codec.bitstream import BitstreamError, read_header
    from pcic_ros.experiments.metrics import psnr

    bags = [_existing_bag(bag)] + ([_existing_bag(scans_bag)] if scans_bag is not None else [])
    compressed = _compressed_frames(bags[0])
    index = _BagIndex(bags, [bm.POINT_CLOUD_TYPE, bm.IMAGE_TYPE, bm.CAMERA_INFO_TYPE, bm.TF_MESSAGE_TYPE])
    inputs = _FrameInputs(index, calibration)
    originals = index.by_stamp(bm.IMAGE_TYPE, originals_topic)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = None
    if video is not None:
        from pcic_ros.bags.video import SideBySideVideo, frame_rate

        stamps = [stamp_to_ns(message.header.stamp) for message in compressed]
        size = (int(compressed[0].width), int(compressed[0].height))
        writer = SideBySideVideo(video, *size, frame_rate(stamps))
    codec: Codec | None = None
    rows = []
    try:
        for message in tqdm(compressed, desc="decode", unit="frame", disable=not progress):
            stamp_ns = stamp_to_ns(message.header.stamp)
            data = np.asarray(message.data, dtype=np.uint8).tobytes()
            scan, this_calibration, scan_state = inputs.of(message)
            png = out_dir / f"{_format_stamp(stamp_ns)}.png"
            error = ""
            image = decode_ms = psnr_db = None
            try:
                if isinstance(this_calibration, CalibrationError):
                    raise this_calibration
                if codec is None:
                    header = read_header(data)
                    codec = Codec(header.model, header.quality, device=device)
                started = time.perf_counter()
                image = codec.decode(data, scan, this_calibration)
                decode_ms = 1000.0 * (time.perf_counter() - started)
            except (BitstreamError, CalibrationError, ValueError) as failure:
                error = str(failure)
                if scan_state.startswith("missing"):
                    error = f"its scan is {scan_state}: {error}"
            matches = originals.get(stamp_ns, [])
            original = image_to_rgb(index.typestore.deserialize_cdr(matches[0][1], bm.IMAGE_TYPE)) if matches else None
            if image is not None:
                from PIL import Image

                Image.fromarray(image).save(png)
                psnr_db = psnr(original, image) if original is not None and original.shape == image.shape else None
            row = DecodedFrame(
                stamp_ns=stamp_ns,
                bytes=len(data),
                bpp=8.0 * len(data) / max(1, int(message.width) * int(message.height)),
                zeros_fallback=bool(message.zeros_fallback),
                scan=scan_state,
                psnr=psnr_db,
                decode_ms=decode_ms,
                png=png.name if not error else "",
                error=error,
            )
            rows.append(row)
            if writer is not None:
                writer.add(original, image, *_captions(row, message, original is not None))
    finally:
        if writer is not None:
            writer.close()
    _write_csv(out_dir / "frames.csv", rows)
    return rows


def _captions(row: DecodedFrame, message: object, has_original: bool) -> tuple[str, str]:
    """What the video draws on the original and on the decoded frame."""
    stamp = _format_stamp(row.stamp_ns)
    original = f"original {stamp}" if has_original else f"{stamp}: no original image in the bag"
    if row.error:
        return original, f"not decoded: {row.error[:80]}"
    quality = float(message.quality)
    psnr_text = f", {row.psnr:.2f} dB PSNR" if row.psnr is not None else ""
    return original, f"{message.codec} q{quality:g}: {row.bpp:.3f} bpp{psnr_text}"


def _write_csv(path: Path, rows: Sequence[DecodedFrame]) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(_CSV_COLUMNS)
        for row in rows:
            writer.writerow(
                [
                    _format_stamp(row.stamp_ns),
                    row.bytes,
                    f"{row.bpp:.6f}",
                    int(row.zeros_fallback),
                    row.scan,
                    "" if row.psnr is None else f"{row.psnr:.4f}",
                    "" if row.decode_ms is None else f"{row.decode_ms:.1f}",
                    row.png,
                    row.error,
                ]
            )


# --- command line ----------------------------------------------------------------------------------


def _run_from_kitti(args: argparse.Namespace) -> int:
    count = from_kitti(args.drive, args.output, max_frames=args.max_frames, first_frame=args.first_frame)
    print(f"{args.output}: {count} frames")
    return 0


def _topic_count(text: str) -> tuple[str, int]:
    topic, _, count = text.rpartition("=")
    if not topic or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"expected TOPIC=N with N >= 1, got '{text}'")
    return topic, int(count)


def _run_play(args: argparse.Namespace) -> int:
    count = play(
        args.bag,
        rate=args.rate,
        topics=args.topics,
        loop=args.loop,
        reliable=args.qos == "reliable",
        depth=args.depth,
        wait_for_subscribers=args.wait_for_subscribers,
        min_subscribers=dict(args.subscribers or []),
    )
    print(f"published {count} messages")
    return 0


def _run_record(args: argparse.Namespace) -> int:
    count = record(args.output, args.topics, duration=args.duration, max_messages=args.max_messages, depth=args.depth)
    print(f"{args.output}: {count} messages")
    return 0


def _run_decode(args: argparse.Namespace) -> int:

    calibration = Calibration.from_kitti(args.calib) if args.calib else None
    rows = decode(
        args.bag,
        args.out,
        scans_bag=args.scans,
        calibration=calibration,
        device=args.device,
        originals_topic=args.originals,
        video=args.video,
    )
    failed = [row for row in rows if not row.ok]
    for row in failed:
        print(f"frame {_format_stamp(row.stamp_ns)} not decoded: {row.error}", file=sys.stderr)
    print(f"{args.out}: {len(rows) - len(failed)} of {len(rows)} frames decoded, frames.csv written")
    if args.video:
        print(f"{args.video}: {len(rows)} frames, original above decoded")
    return 1 if failed else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    bag = subparsers.add_parser("bag")
    sub = bag.add_subparsers(dest="bag_command", required=True)

    kitti = sub.add_parser("from-kitti", help="write a KITTI raw drive as a bag")
    kitti.add_argument("drive", help="KITTI raw drive folder, e.g. .../2011_09_26/2011_09_26_drive_0001_sync")
    kitti.add_argument("output", help="bag folder to create")
    kitti.add_argument("--max-frames", type=int, default=None)
    kitti.add_argument("--first-frame", type=int, default=0, help="skip this many frames of the drive")
    kitti.set_defaults(func=_run_from_kitti)

    player = sub.add_parser("play", help="publish a bag's messages at their recorded rate")
    player.add_argument("bag")
    player.add_argument("--rate", type=float, default=1.0, help="speed factor (2 = twice as fast)")
    player.add_argument("--topics", nargs="+", help="only these topics (default: all)")
    player.add_argument("--loop", action="store_true", help="start over at the end until Ctrl-C")
    player.add_argument("--qos", choices=["reliable", "best-effort"], default="reliable")
    player.add_argument("--depth", type=int, default=100, help="publisher history depth")
    player.add_argument(
        "--wait-for-subscribers", type=float, default=0.0, metavar="SECONDS", help="wait for a subscriber per topic"
    )
    player.add_argument(
        "--subscribers",
        nargs="+",
        type=_topic_count,
        metavar="TOPIC=N",
        help="with --wait-for-subscribers: wait for N subscribers on TOPIC instead of one",
    )
    player.set_defaults(func=_run_play)

    recorder = sub.add_parser("record", help="record topics into a new MCAP bag until Ctrl-C")
    recorder.add_argument("output", help="bag folder to create")
    recorder.add_argument("--topics", nargs="+", required=True)
    recorder.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    recorder.add_argument("--max-messages", type=int, default=None, help="stop after this many messages")
    recorder.add_argument("--depth", type=int, default=100, help="subscription history depth")
    recorder.set_defaults(func=_run_record)

    decoder = sub.add_parser("decode", help="decode a bag's CompressedFrame messages into PNGs and a CSV")
    decoder.add_argument("bag")
    decoder.add_argument("--out", required=True, help="folder for the PNGs and frames.csv")
    decoder.add_argument("--scans", help="bag holding the PointCloud2 scans, when not in BAG")
    decoder.add_argument("--calib", help="KITTI calibration instead of the bag's CameraInfo and /tf_static")
    decoder.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    decoder.add_argument(
        "--video", help="also write a video (.mp4 or .avi): the original above the decoded frame, bpp and PSNR"
    )
    decoder.add_argument(
        "--originals", default=IMAGE_TOPIC, metavar="TOPIC", help="Image topic to measure PSNR against"
    )
    decoder.set_defaults(func=_run_decode)
