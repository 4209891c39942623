"""The pcic_ros messages: built, typed as declared, and carried intact by rclpy and Fast DDS.

Run as a script, this file is also the publisher and subscriber processes of the pub/sub test.
"""

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from builtin_interfaces.msg import Time
from pcic_ros.msg import CodecStatistics, CompressedFrame
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Header

import pcic_ros

PAYLOAD_BYTES = 1 << 20
# A domain of its own and a per-run topic keep concurrent ROS tests on this machine apart.
DOMAIN_ID = "61"
CHILD_DEADLINE_S = 30.0

COMPRESSED_FRAME_FIELDS = {
    "header": "std_msgs/Header",
    "scan_stamp": "builtin_interfaces/Time",
    "scan_frame_id": "string",
    "zeros_fallback": "boolean",
    "projection": "double[12]",
    "camera_from_lidar": "double[16]",
    "codec": "string",
    "format_version": "uint8",
    "quality": "float",
    "width": "uint32",
    "height": "uint32",
    "data": "sequence<uint8>",
}

CODEC_STATISTICS_FIELDS = {
    "header": "std_msgs/Header",
    "node_name": "string",
    "frames_in": "uint64",
    "frames_out": "uint64",
    "frames_dropped_queue": "uint64",
    "frames_dropped_budget": "uint64",
    "frames_zeros_fallback": "uint64",
    "frames_failed": "uint64",
    "last_bytes": "uint32",
    "mean_bytes": "double",
    "mean_bpp": "double",
    "bits_per_second": "double",
    "target_bits_per_second": "double",
    "encode_ms_mean": "double",
    "encode_ms_max": "double",
    "decode_ms_mean": "double",
    "decode_ms_max": "double",
    "queue_depth": "uint32",
    "current_quality": "float",
    "empty_scan": "uint64",
    "nan_scan": "uint64",
    "no_points_in_view": "uint64",
    "tf_missing": "uint64",
    "camera_info_mismatch": "uint64",
    "bad_encoding": "uint64",
    "corrupt_message": "uint64",
    "scan_timeout": "uint64",
}


def make_frame() -> CompressedFrame:
    """A frame with a 1 MiB pseudo-random payload and no field left at its default."""
    payload = random.Random(20240611).randbytes(PAYLOAD_BYTES)
    return CompressedFrame(
        header=Header(stamp=Time(sec=1_717_000_123, nanosec=456_789_012), frame_id="camera_front_optical"),
        scan_stamp=Time(sec=1_717_000_123, nanosec=401_000_000),
        scan_frame_id="lidar_top",
        zeros_fallback=True,
        projection=[721.5377 + index for index in range(12)],
        camera_from_lidar=[index / 7 for index in range(16)],
        codec="hyper-pc",
        format_version=3,
        quality=2.375,
        width=1920,
        height=1080,
        data=payload,
    )


def make_statistics() -> CodecStatistics:
    """Statistics whose integers use the top of their ranges, where a narrowed type would show."""
    stats = CodecStatistics(
        header=Header(stamp=Time(sec=1_717_000_200, nanosec=5), frame_id=""),
        node_name="/vehicle/pcic_encoder",
    )
    maxima = {"uint8": 2**8 - 1, "uint32": 2**32 - 1, "uint64": 2**64 - 1}
    for index, (name, kind) in enumerate(CodecStatistics.get_fields_and_field_types().items()):
        if kind in maxima:
            setattr(stats, name, maxima[kind] - index)
        elif kind == "double":
            setattr(stats, name, 1e9 / (index + 3))
        elif kind == "float":  # a float32's value: exact through the wire
            setattr(stats, name, 2.5 + index / 64)
    return stats


def test_messages_import_from_the_package():
    assert pcic_ros.msg.CompressedFrame is CompressedFrame
    assert CompressedFrame.__module__.startswith("pcic_ros.msg")
    assert CodecStatistics.__module__.startswith("pcic_ros.msg")


def test_fields_have_the_declared_types():
    assert CompressedFrame.get_fields_and_field_types() == COMPRESSED_FRAME_FIELDS
    assert CodecStatistics.get_fields_and_field_types() == CODEC_STATISTICS_FIELDS


def test_integer_fields_reject_values_outside_their_type_when_checked():
    # rosidl checks field values only on request (check_fields or ROS_PYTHON_CHECK_FIELDS=1);
    # unchecked, an out-of-range integer is silently truncated on the wire.
    with pytest.raises(AssertionError):
        CompressedFrame(check_fields=True, format_version=256)
    with pytest.raises(AssertionError):
        CodecStatistics(check_fields=True, frames_in=-1)


def test_compressed_frame_round_trips_through_serialization():
    frame = make_frame()
    wire = serialize_message(frame)
    assert len(wire) > PAYLOAD_BYTES
    back = deserialize_message(wire, CompressedFrame)
    assert back == frame
    assert bytes(back.data) == bytes(frame.data)


def test_codec_statistics_round_trips_through_serialization():
    stats = make_statistics()
    back = deserialize_message(serialize_message(stats), CodecStatistics)
    assert back == stats
    assert back.frames_in == 2**64 - 1 - 2


def test_publish_subscribe_between_processes_delivers_frame_intact(tmp_path):
    received = tmp_path / "received.cdr"
    topic = f"/pcic_interfaces_test_{os.getpid()}"
    env = dict(os.environ)
    env.update(
        ROS_DOMAIN_ID=DOMAIN_ID,
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_LOG_DIR=str(tmp_path / "ros_log"),
        # The children run this file as a script; they import the same pcic_ros as this process.
        PYTHONPATH=os.pathsep.join([str(Path(pcic_ros.__file__).parents[1]), env.get("PYTHONPATH", "")]),
    )
    script = str(Path(__file__).resolve())
    subscriber = subprocess.Popen(
        [sys.executable, script, "subscribe", topic, str(received)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    publisher = subprocess.Popen(
        [sys.executable, script, "publish", topic],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        publisher_out, _ = publisher.communicate(timeout=CHILD_DEADLINE_S + 30)
        subscriber_out, _ = subscriber.communicate(timeout=CHILD_DEADLINE_S + 30)
    finally:
        for child in (publisher, subscriber):
            if child.poll() is None:
                child.kill()
                child.wait()
    assert publisher.returncode == 0, publisher_out
    assert subscriber.returncode == 0, subscriber_out
    assert deserialize_message(received.read_bytes(), CompressedFrame) == make_frame()


def _qos() -> QoSProfile:
    # Reliable and transient-local: the frame is delivered even if the subscriber matches the
    # publisher a moment after the publisher has matched the subscriber.
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def _publish(topic: str) -> int:
    rclpy.init()
    try:
        node = rclpy.create_node("pcic_interfaces_test_publisher")
        publisher = node.create_publisher(CompressedFrame, topic, _qos())
        deadline = time.monotonic() + CHILD_DEADLINE_S
        while publisher.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                print("publisher: no subscriber matched", flush=True)
                return 1
            time.sleep(0.05)
        publisher.publish(make_frame())
        if not publisher.wait_for_all_acked(Duration(seconds=CHILD_DEADLINE_S)):
            print("publisher: frame not acknowledged", flush=True)
            return 1
        node.destroy_node()
        return 0
    finally:
        rclpy.shutdown()


def _subscribe(topic: str, out: str) -> int:
    rclpy.init()
    try:
        node = rclpy.create_node("pcic_interfaces_test_subscriber")
        frames = []
        node.create_subscription(CompressedFrame, topic, frames.append, _qos())
        deadline = time.monotonic() + CHILD_DEADLINE_S
        while not frames:
            if time.monotonic() > deadline:
                print("subscriber: no frame arrived", flush=True)
                return 1
            rclpy.spin_once(node, timeout_sec=0.1)
        Path(out).write_bytes(serialize_message(frames[0]))
        node.destroy_node()
        return 0
    finally:
        rclpy.shutdown()


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    sys.exit({"publish": _publish, "subscribe": _subscribe}[role](*args))
