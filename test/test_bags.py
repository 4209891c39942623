"""pcic bag: from-kitti on real frames, decode of CompressedFrame bags, play -> record through rclpy."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import DATA, REPO, bag_calibration
from PIL import Image
from rosbags.rosbag2 import Reader

from pcic_ros.bags import CAMERA_INFO_TOPIC, IMAGE_TOPIC, POINTS_TOPIC, TF_STATIC_TOPIC, from_kitti
from pcic_ros.bags import messages as bm
from pcic_ros.experiments.datasets import discover_frames
from pcic_ros.ros.messages import calibration_fields, image_to_rgb, pointcloud2_to_points, stamp_to_ns

DRIVE = DATA / "kitti_raw" / "2011_09_26" / "2011_09_26_drive_sfnd_sync"
FIRST_FRAME = 10
FRAME_COUNT = 5


def read_bag(path) -> list[tuple[str, int, object]]:
    """(topic, log time, deserialized message) of every message, in log-time order."""
    typestore = bm.bag_typestore()
    with Reader(path) as reader:
        return [(c.topic, t, typestore.deserialize_cdr(bytes(data), c.msgtype)) for c, t, data in reader.messages()]


def drive_frames():
    frames = [f for f in discover_frames(DRIVE.parent) if f.sequence == DRIVE.name]
    return frames[FIRST_FRAME : FIRST_FRAME + FRAME_COUNT]


@pytest.fixture(scope="module")
def kitti_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / "kitti"
    assert from_kitti(DRIVE, path, max_frames=FRAME_COUNT, first_frame=FIRST_FRAME) == FRAME_COUNT
    return path


def test_from_kitti_writes_an_mcap_bag_with_the_four_topics(kitti_bag):
    assert list(kitti_bag.glob("*.mcap"))
    with Reader(kitti_bag) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert types == {
        IMAGE_TOPIC: "sensor_msgs/msg/Image",
        CAMERA_INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
        POINTS_TOPIC: "sensor_msgs/msg/PointCloud2",
        TF_STATIC_TOPIC: "tf2_msgs/msg/TFMessage",
    }
    assert counts == {IMAGE_TOPIC: 5, CAMERA_INFO_TOPIC: 5, POINTS_TOPIC: 5, TF_STATIC_TOPIC: 1}


def test_from_kitti_images_and_scans_are_the_original_data(kitti_bag):
    messages = read_bag(kitti_bag)
    images = [m for topic, _, m in messages if topic == IMAGE_TOPIC]
    scans = [m for topic, _, m in messages if topic == POINTS_TOPIC]
    for frame, image, cloud in zip(drive_frames(), images, scans, strict=True):
        assert image.encoding == "rgb8" and image.header.frame_id == bm.CAMERA_FRAME
        np.testing.assert_array_equal(image_to_rgb(image), frame.image())
        assert cloud.header.frame_id == bm.LIDAR_FRAME
        assert [f.name for f in cloud.fields] == ["x", "y", "z", "intensity"]
        np.testing.assert_array_equal(pointcloud2_to_points(cloud), frame.scan()[:, :3])


def test_from_kitti_frames_are_spaced_at_10_hz_and_logged_at_their_stamps(kitti_bag):
    messages = read_bag(kitti_bag)
    for topic in (IMAGE_TOPIC, CAMERA_INFO_TOPIC, POINTS_TOPIC):
        stamps = [stamp_to_ns(m.header.stamp) for t, _, m in messages if t == topic]
        logged = [log_time for t, log_time, _ in messages if t == topic]
        assert stamps == logged
        assert np.diff(stamps).tolist() == [100_000_000] * (FRAME_COUNT - 1)
    image_stamps = [stamp_to_ns(m.header.stamp) for t, _, m in messages if t == IMAGE_TOPIC]
    scan_stamps = [stamp_to_ns(m.header.stamp) for t, _, m in messages if t == POINTS_TOPIC]
    assert image_stamps == scan_stamps
    assert messages[0][0] == TF_STATIC_TOPIC and messages[0][1] <= image_stamps[0]


def test_from_kitti_calibration_reproduces_the_kitti_projection(kitti_bag):
    messages = read_bag(kitti_bag)
    info = next(m for t, _, m in messages if t == CAMERA_INFO_TOPIC)
    tf_message = next(m for t, _, m in messages if t == TF_STATIC_TOPIC)
    kitti = drive_frames()[0].calibration()
    np.testing.assert_array_equal(info.p.reshape(3, 4), kitti.projection)
    np.testing.assert_array_equal(info.k.reshape(3, 3), kitti.projection[:, :3])
    np.testing.assert_array_equal(info.r.reshape(3, 3), np.eye(3))
    assert (info.width, info.height) == (1242, 375)
    [transform] = tf_message.transforms
    assert (transform.header.frame_id, transform.child_frame_id) == ("camera", "velodyne")
    from_bag = bag_calibration(info, tf_message, lidar_frame="velodyne")
    # P * (R_rect * T_velo_to_cam) is eq. 2's P * R_rect * T_velo_to_cam, up to the quaternion's
    # orthonormal rotation (KITTI's is orthonormal to ~5e-8): every point lands within 1e-3 pixel.
    scan = drive_frames()[0].scan()
    homogeneous = np.hstack([scan[:, :3].astype(np.float64), np.ones((len(scan), 1))]).T
    expected, actual = kitti.lidar_to_image @ homogeneous, from_bag.lidar_to_image @ homogeneous
    in_front = expected[2] > 1.0
    assert in_front.sum() > 1000
    pixels = expected[:2, in_front] / expected[2, in_front]
    np.testing.assert_allclose(actual[:2, in_front] / actual[2, in_front], pixels, rtol=0, atol=1e-3)


def test_from_kitti_uses_the_drive_timestamps_files_when_present(tmp_path):
    drive = tmp_path / "2011_09_26" / "2011_09_26_drive_0001_sync"
    for sensor in ("image_02", "velodyne_points"):
        (drive / sensor / "data").mkdir(parents=True)
        for frame in drive_frames()[:2]:
            source = frame.image_path if sensor == "image_02" else frame.scan_path
            (drive / sensor / "data" / source.name).symlink_to(source)
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt"):
        (tmp_path / "2011_09_26" / name).symlink_to(DRIVE.parent / name)
    lines = [f"2011-09-26 13:02:25.{index:09d}" for index in range(12)]
    (drive / "image_02" / "timestamps.txt").write_text("\n".join(lines) + "\n")
    (drive / "velodyne_points" / "timestamps.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "bag"
    assert from_kitti(drive, out) == 2
    stamps = [stamp_to_ns(m.header.stamp) for t, _, m in read_bag(out) if t == IMAGE_TOPIC]
    day = 1316995200 * 1_000_000_000
    second = day + (13 * 3600 + 2 * 60 + 25) * 1_000_000_000
    assert stamps == [second + 10, second + 11]


def compressed_frame_message(
    data: bytes,
    stamp_ns: int,
    scan_stamp_ns: int | None,
    codec: str,
    quality: float,
    shape,
    typestore=None,
    calibration=None,
):
    """A pcic_ros/msg/CompressedFrame as the encoder node publishes it (of ``typestore``'s definition),
    carrying ``calibration`` when given (all zeros, as for a frame coded without a scan, otherwise)."""
    types = (typestore or bm.bag_typestore()).types
    header = types["std_msgs/msg/Header"](stamp=bm.stamp(stamp_ns), frame_id=bm.CAMERA_FRAME)
    carried = {}
    if "projection" in types[bm.COMPRESSED_FRAME_TYPE].__dataclass_fields__:
        projection, camera_from_lidar = calibration_fields(calibration) if calibration else ([0.0] * 12, [0.0] * 16)
        carried = {"projection": np.array(projection), "camera_from_lidar": np.array(camera_from_lidar)}
    return types[bm.COMPRESSED_FRAME_TYPE](
        **carried,
        header=header,
        scan_stamp=bm.stamp(scan_stamp_ns or 0),
        scan_frame_id=bm.LIDAR_FRAME if scan_stamp_ns is not None else "",
        zeros_fallback=scan_stamp_ns is None,
        codec=codec,
        format_version=1,
        quality=quality,
        width=shape[1],
        height=shape[0],
        data=np.frombuffer(data, dtype=np.uint8),
    )


@pytest.fixture(scope="module")
def compressed_bag(kitti_bag, tmp_path_factory):
    """A bag of CompressedFrame messages for the kitti_bag frames, and what Codec.decode makes of each.

    Frame 0: HYPER q1. Frame 1: the lean HYPER-PC (hyper-pc-vr, quick at full size) at quality 2.5,
    coded against the bag's own scan and calibration. Frame 2: the same whose scan stamp is in no bag. Frame 0 is also
    in the bag as the base station publishes it (a decoded Image with the camera's stamp), which must
    not be taken for the original."""
    from pcic_ros.codec.api import Codec

    messages = read_bag(kitti_bag)
    images = [m for t, _, m in messages if t == IMAGE_TOPIC]
    clouds = [m for t, _, m in messages if t == POINTS_TOPIC]
    info = next(m for t, _, m in messages if t == CAMERA_INFO_TOPIC)
    tf_message = next(m for t, _, m in messages if t == TF_STATIC_TOPIC)
    calibration = bag_calibration(info, tf_message)
    hyper, hyper_pc = Codec("hyper", 1, device="cpu"), Codec("hyper-pc-vr", 2.5, device="cpu")
    frames = []
    for index in range(3):
        image = image_to_rgb(images[index])
        stamp_ns = stamp_to_ns(images[index].header.stamp)
        scan_stamp_ns = stamp_to_ns(clouds[index].header.stamp)
        scan = pointcloud2_to_points(clouds[index])
        if index == 0:
            data = hyper.encode(image, scan, calibration)
            frames.append((stamp_ns, scan_stamp_ns, "hyper", data, hyper.decode(data), image))
        else:
            data = hyper_pc.encode(image, scan, calibration)
            expected = hyper_pc.decode(data, scan, calibration) if index == 1 else None
            frames.append((stamp_ns, scan_stamp_ns if index == 1 else 1, "hyper-pc-vr", data, expected, image))
    path = tmp_path_factory.mktemp("bags") / "compressed"
    write_compressed_bag(path, frames, bm.bag_typestore())
    return path, frames, calibration, clouds


def test_decode_writes_a_video_of_original_above_decoded_at_the_stream_rate(kitti_bag, compressed_bag, tmp_path):
    """One video frame per compressed frame, undecodable ones included (shown as such); the top half is
    the camera's image and the bottom half the decoded one, as far as mp4v's own loss lets them show."""
    import cv2

    from pcic_ros.bags import decode
    from pcic_ros.experiments.metrics import psnr

    path, frames, *_ = compressed_bag
    rows = decode(path, tmp_path / "out", scans_bag=kitti_bag, device="cpu", progress=False, video=tmp_path / "bag.mp4")
    capture = cv2.VideoCapture(str(tmp_path / "bag.mp4"))
    video = []
    while (frame := capture.read())[0]:
        video.append(cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0, rel=0.01), "KITTI's 10 Hz stamps"
    assert len(video) == len(rows) == len(frames) and not rows[2].ok
    height, width = frames[0][5].shape[:2]
    assert video[0].shape == (2 * (height + height % 2), width + width % 2, 3)
    original, decoded = video[1][:height, :width], video[1][height + height % 2 :][:height, :width]
    # The captions cover the first rows: compare below them.
    assert psnr(original[60:], frames[1][5][60:]) > 25 and psnr(decoded[60:], frames[1][4][60:]) > 25
    with pytest.raises(ValueError, match="mp4"):
        decode(path, tmp_path / "other", scans_bag=kitti_bag, device="cpu", progress=False, video=tmp_path / "x.gif")


def test_a_frame_that_carries_its_calibration_decodes_without_camera_info_or_tf(compressed_bag, tmp_path):
    """A bag of the compressed frames and the scans only: each frame's own P and T_camera_lidar
    project the scan, and HYPER-PC decodes to the same pixels."""
    from pcic_ros.bags import decode

    _, frames, calibration, clouds = compressed_bag
    write_compressed_bag(tmp_path / "carried", frames[:2], bm.bag_typestore(), calibration, clouds[:2])
    with Reader(tmp_path / "carried") as reader:
        assert {c.msgtype for c in reader.connections} == {bm.COMPRESSED_FRAME_TYPE, bm.IMAGE_TYPE, bm.POINT_CLOUD_TYPE}
    rows = decode(tmp_path / "carried", tmp_path / "decoded", device="cpu", progress=False)
    assert [row.ok for row in rows] == [True, True], [row.error for row in rows]
    assert rows[1].scan == "paired"
    decoded = np.asarray(Image.open(tmp_path / "decoded" / rows[1].png))
    np.testing.assert_array_equal(decoded, frames[1][4])


def write_compressed_bag(path, frames, typestore, calibration=None, clouds=()) -> None:
    """The frames as CompressedFrame messages of ``typestore``'s definition (carrying ``calibration``
    when given), frame 0 decoded, and ``clouds`` (PointCloud2 messages) on the points topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    connection = writer.add_connection("/camera/image_rect/pcic", bm.COMPRESSED_FRAME_TYPE, typestore=typestore)
    decoded = writer.add_connection("/pcic/image", bm.IMAGE_TYPE, typestore=typestore)
    if clouds:
        points = writer.add_connection(POINTS_TOPIC, bm.POINT_CLOUD_TYPE, typestore=typestore)
        for cloud in clouds:
            stamp_ns = stamp_to_ns(cloud.header.stamp)
            writer.write(points, stamp_ns, typestore.serialize_cdr(cloud, bm.POINT_CLOUD_TYPE))
    for stamp_ns, scan_stamp_ns, codec, data, reconstruction, image in frames:
        quality = 1 if codec == "hyper" else 2.5
        message = compressed_frame_message(
            data, stamp_ns, scan_stamp_ns, codec, quality, image.shape, typestore, calibration
        )
        writer.write(connection, stamp_ns, typestore.serialize_cdr(message, bm.COMPRESSED_FRAME_TYPE))
        if codec == "hyper":
            image_message = bm.image_message(reconstruction, stamp_ns)
            writer.write(decoded, stamp_ns + 1, typestore.serialize_cdr(image_message, bm.IMAGE_TYPE))
    writer.close()


def test_a_bag_recorded_with_the_older_compressed_frame_decodes_as_before(kitti_bag, compressed_bag, tmp_path):
    """CompressedFrame.quality was uint8 and the calibration fields did not exist before the
    variable-rate models: a bag recorded then is read with the definition it carries, and its frames
    decode to the same pixels."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from pcic_ros.bags import decode

    path, frames, *_ = compressed_bag
    current = (REPO / "msg" / "CompressedFrame.msg").read_text()
    assert "float32 quality" in current
    old_typestore = get_typestore(Stores.ROS2_KILTED)
    old_definition = current.replace("float32 quality", "uint8 quality")
    old_definition = re.sub(r"^float64\[\d+\] (projection|camera_from_lidar)\n", "", old_definition, flags=re.M)
    assert not re.search(r"^float64\[", old_definition, flags=re.M)
    old_typestore.register(get_types_from_msg(old_definition, bm.COMPRESSED_FRAME_TYPE))
    old_frames = [frame for frame in frames if frame[2] == "hyper"]
    write_compressed_bag(tmp_path / "old", old_frames, old_typestore)
    with Reader(tmp_path / "old") as reader:
        recorded = [c.msgdef.data for c in reader.connections if c.msgtype == bm.COMPRESSED_FRAME_TYPE]
    assert "uint8 quality" in recorded[0]
    rows = decode(tmp_path / "old", tmp_path / "decoded", scans_bag=kitti_bag, device="cpu", progress=False)
    assert [row.ok for row in rows] == [True]
    decoded = np.asarray(Image.open(tmp_path / "decoded" / rows[0].png))
    np.testing.assert_array_equal(decoded, old_frames[0][4])


def test_decode_pairs_scans_from_another_bag_and_reproduces_codec_decode(kitti_bag, compressed_bag, tmp_path):
    import csv

    from pcic_ros.bags import decode
    from pcic_ros.experiments.metrics import psnr

    path, frames, *_ = compressed_bag
    rows = decode(path, tmp_path, scans_bag=kitti_bag, device="cpu", progress=False)
    assert [row.stamp_ns for row in rows] == [frame[0] for frame in frames]
    for row, (_, _, _, data, expected, original) in zip(rows[:2], frames, strict=False):
        assert row.ok, row.error
        assert row.scan == "paired"
        assert row.bytes == len(data)
        assert row.bpp == pytest.approx(8 * len(data) / (original.shape[0] * original.shape[1]))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / row.png)), expected)
    for row, frame in zip(rows[:2], frames, strict=False):
        assert row.psnr == pytest.approx(psnr(frame[5], frame[4]))
    missing = rows[2]
    assert not missing.ok and missing.png == "" and missing.scan.startswith("missing")
    assert "scan" in missing.error
    with (tmp_path / "frames.csv").open() as stream:
        table = list(csv.DictReader(stream))
    assert [r["stamp"] for r in table] == [f"{s // 10**9}.{s % 10**9:09d}" for s, *_ in frames]
    assert [r["error"] == "" for r in table] == [True, True, False]
    assert [r["png"] for r in table[:2]] == [row.png for row in rows[:2]]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(row.png for row in rows[:2])


def test_decode_command_lists_undecodable_frames_and_fails(kitti_bag, compressed_bag, tmp_path, capsys):
    import argparse

    from pcic_ros.bags import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    path, frames, *_ = compressed_bag
    # Without the scans bag, HYPER still decodes (it does not use the scan) but HYPER-PC frames cannot.
    args = parser.parse_args(["bag", "decode", str(path), "--out", str(tmp_path), "--device", "cpu"])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    stamps = [f"{s // 10**9}.{s % 10**9:09d}" for s, *_ in frames]
    assert f"frame {stamps[1]} not decoded" in err and f"frame {stamps[2]} not decoded" in err
    assert stamps[0] not in err


CLI = (
    "import argparse, sys\n"
    "from pcic_ros.bags import add_parser\n"
    "parser = argparse.ArgumentParser()\n"
    "add_parser(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


@pytest.fixture
def ros_env(tmp_path, monkeypatch):
    """Environment of the play and record processes: this suite's own DDS domain, localhost only."""
    import os

    env = dict(os.environ, ROS_DOMAIN_ID="74", ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOG_DIR=str(tmp_path))
    env.setdefault("HOME", str(tmp_path))
    return env


def bag_command(env, *args):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", CLI, "bag", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def raw_messages(path) -> dict[str, list[bytes]]:
    with Reader(path) as reader:
        topics: dict[str, list[bytes]] = {c.topic: [] for c in reader.connections}
        for connection, _, data in reader.messages():
            topics[connection.topic].append(bytes(data))
        return topics


@pytest.mark.slow
def test_play_into_record_delivers_every_message_byte_identical(kitti_bag, tmp_path, ros_env):
    recorded = tmp_path / "recorded"
    topics = [IMAGE_TOPIC, CAMERA_INFO_TOPIC, POINTS_TOPIC, TF_STATIC_TOPIC]
    total = 1 + 3 * FRAME_COUNT
    recorder = bag_command(
        ros_env, "record", str(recorded), "--topics", *topics, "--max-messages", str(total), "--duration", "90"
    )
    player = bag_command(ros_env, "play", str(kitti_bag), "--rate", "4", "--wait-for-subscribers", "60")
    try:
        player_out, player_err = player.communicate(timeout=120)
        recorder_out, recorder_err = recorder.communicate(timeout=120)
    finally:
        player.kill()
        recorder.kill()
    assert player.returncode == 0, player_err
    assert recorder.returncode == 0, recorder_err
    assert f"published {total} messages" in player_out
    assert raw_messages(recorded) == raw_messages(kitti_bag)
    with Reader(recorded) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == {
            IMAGE_TOPIC: "sensor_msgs/msg/Image",
            CAMERA_INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
            POINTS_TOPIC: "sensor_msgs/msg/PointCloud2",
            TF_STATIC_TOPIC: "tf2_msgs/msg/TFMessage",
        }


@pytest.mark.slow
def test_record_closes_a_readable_bag_on_sigterm(tmp_path, ros_env):
    import signal

    recorded = tmp_path / "recorded"
    recorder = bag_command(ros_env, "record", str(recorded), "--topics", "/nobody/publishes/this")
    try:
        for line in recorder.stderr:
            if "waiting for publishers" in line:
                break
        recorder.send_signal(signal.SIGTERM)
        recorder.communicate(timeout=60)
    finally:
        recorder.kill()
    assert recorder.returncode == 0
    with Reader(recorded) as reader:
        assert reader.message_count == 0
