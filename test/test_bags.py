"""pcic bag: from-kitti on real frames, decode of CompressedFrame bags, play -> record through rclpy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA
from rosbags.rosbag2 import Reader

from pcic_ros import bag_messages as bm
from pcic_ros.bags import CAMERA_INFO_TOPIC, IMAGE_TOPIC, POINTS_TOPIC, TF_STATIC_TOPIC, from_kitti
from pcic_ros.datasets import discover_frames

DRIVE = DATA / "kitti_raw" / "2011_09_26" / "2011_09_26_drive_sfnd_sync"
FIRST_FRAME = 10
FRAME_COUNT = 5


def read_bag(path) -> list[tuple[str, int, object]]:
    """(topic, log time, deserialized message) of every message, in log-time order."""
    typestore = bm.bag_typestore()
    with Reader(path) as reader:
        return [
            (c.topic, t, typestore.deserialize_cdr(bytes(data), c.msgtype)) for c, t, data in reader.messages()
        ]


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
        np.testing.assert_array_equal(bm.image_from_message(image), frame.image())
        assert cloud.header.frame_id == bm.LIDAR_FRAME
        assert [f.name for f in cloud.fields] == ["x", "y", "z", "intensity"]
        np.testing.assert_array_equal(bm.scan_from_point_cloud(cloud), frame.scan())


def test_from_kitti_frames_are_spaced_at_10_hz_and_logged_at_their_stamps(kitti_bag):
    messages = read_bag(kitti_bag)
    for topic in (IMAGE_TOPIC, CAMERA_INFO_TOPIC, POINTS_TOPIC):
        stamps = [bm.stamp_nanoseconds(m.header.stamp) for t, _, m in messages if t == topic]
        logged = [log_time for t, log_time, _ in messages if t == topic]
        assert stamps == logged
        assert np.diff(stamps).tolist() == [100_000_000] * (FRAME_COUNT - 1)
    image_stamps = [bm.stamp_nanoseconds(m.header.stamp) for t, _, m in messages if t == IMAGE_TOPIC]
    scan_stamps = [bm.stamp_nanoseconds(m.header.stamp) for t, _, m in messages if t == POINTS_TOPIC]
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
    from_bag = bm.calibration_from_messages(info, tf_message, lidar_frame="velodyne")
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
    stamps = [bm.stamp_nanoseconds(m.header.stamp) for t, _, m in read_bag(out) if t == IMAGE_TOPIC]
    day = 1316995200 * 1_000_000_000
    second = day + (13 * 3600 + 2 * 60 + 25) * 1_000_000_000
    assert stamps == [second + 10, second + 11]
