"""Resident memory of the encoder and decoder nodes under camera and LiDAR load, by kind of mapping.

The scenario of ``test/test_ros_load.py`` (the tests' harness, shipped parameter files, ``hyper`` q1 on
the CPU, full-size KITTI raw frames: images with CameraInfo at 30 Hz and a scan with every third),
run once per ``release_memory`` setting asked for. Every second each node's resident set is read from
``/proc/<pid>/status``, and every 15 s split by mapping from ``/proc/<pid>/smaps``: glibc's main heap
(``[heap]``), its per-thread heaps (anonymous 64 MiB regions), other anonymous memory (buffers of
their own mapping, Python's arenas, thread stacks), shared memory (Fast DDS segments) and files.
Prints the median resident MiB of each 30 s window, then the split at each sample. Nothing is
asserted; the figures depend on the machine and its load.

    .venv/bin/python bench/bench_node_memory.py [--seconds 300] [--release-memory true false]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

# The feeder and the node processes are the ROS tests' own harness, so the bench runs what they check.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from ros_harness import (  # noqa: E402
    REPO,
    NodeProcess,
    RosBench,
    SensorStream,
    ros_environment,
    start_decoder,
    start_encoder,
)
from test_ros_load import (  # noqa: E402
    BEST_EFFORT,
    CAMERA_HZ,
    DECODER_CONFIG,
    ENCODER_CONFIG,
    LOAD_ENCODER,
    SCAN_EVERY,
    SHIPPED_ENCODER,
)
from test_ros_nodes import kitti_frames  # noqa: E402

DOMAIN_ID = 91
WINDOW_S = 30
SPLIT_EVERY_S = 15
KINDS = ("heap", "thread heaps", "other anonymous", "shared memory", "files")
#: glibc reserves each per-thread heap as one 64 MiB mapping (HEAP_MAX_SIZE on 64-bit).
THREAD_HEAP_BYTES = 64 << 20
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


def resident_by_kind(pid: int) -> dict[str, float]:
    """Resident MiB of the process by kind of mapping (``KINDS``)."""
    kib = dict.fromkeys(KINDS, 0)
    kind = "files"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if mapping := _MAPPING.match(line):
            start, end, path = int(mapping[1], 16), int(mapping[2], 16), mapping[3]
            if path == "[heap]":
                kind = "heap"
            elif path.startswith("/dev/shm"):
                kind = "shared memory"
            elif path == "":
                # A thread heap keeps its 64 MiB alignment but may have been shrunk from its end.
                aligned = start % THREAD_HEAP_BYTES == 0 and end - start <= THREAD_HEAP_BYTES
                kind = "thread heaps" if aligned else "other anonymous"
            elif path.startswith("["):
                kind = "other anonymous"
            else:
                kind = "files"
        elif line.startswith("Rss:"):
            kib[kind] += int(line.split()[1])
    return {name: value / 1024 for name, value in kib.items()}


def run_load(seconds: float, release_memory: bool, run_dir: Path) -> dict[str, dict[str, list]]:
    """Feed both nodes for ``seconds``; per node, (elapsed, MiB) each second and the split every 15 s."""
    projection, lidar_to_camera, frames = kitti_frames(10)
    env = ros_environment(DOMAIN_ID, run_dir / "ros_log")
    setting = {"release_memory": release_memory}
    nodes: dict[str, NodeProcess] = {
        "encoder": start_encoder(env, run_dir / "encoder.log", {**LOAD_ENCODER, **setting}, (ENCODER_CONFIG,)),
        "decoder": start_decoder(env, run_dir / "decoder.log", {"device": "cpu", **setting}, (DECODER_CONFIG,)),
    }
    samples: dict[str, dict[str, list]] = {name: {"resident": [], "split": []} for name in nodes}

    def sample(elapsed_s: float) -> None:
        for name, node in nodes.items():
            samples[name]["resident"].append((elapsed_s, node.resident_bytes() / 2**20))
            if round(elapsed_s) % SPLIT_EVERY_S == 0:
                samples[name]["split"].append((elapsed_s, resident_by_kind(node.process.pid)))

    bench = RosBench(DOMAIN_ID, compressed_qos=BEST_EFFORT)
    try:
        bench.wait_for_subscribers(list(nodes.values()), image=1, scan=2)
        bench.publish_static_transform(lidar_to_camera, "camera", "velodyne")
        SensorStream(bench, frames, projection, CAMERA_HZ, SCAN_EVERY).run(seconds, list(nodes.values()), sample)
    finally:
        bench.close()
        for node in nodes.values():
            node.stop()
    return samples


def report(seconds: float, release_memory: bool, samples: dict[str, dict[str, list]]) -> None:
    print(f"\nrelease_memory: {str(release_memory).lower()}")
    starts = range(0, int(seconds) - WINDOW_S + 1, WINDOW_S)
    print(f"  median resident MiB of each {WINDOW_S} s window, from {', '.join(f'{s} s' for s in starts)}")
    for name, node in samples.items():
        medians = [statistics.median(m for t, m in node["resident"] if s <= t < s + WINDOW_S) for s in starts]
        print(f"  {name:<9}" + "".join(f"{m:>7.0f}" for m in medians))
    for name, node in samples.items():
        print(f"  {name} resident MiB by mapping, every {SPLIT_EVERY_S} s (one sample: a frame may be in flight)")
        print("  " + f"{'s':>6}" + "".join(f"{kind:>17}" for kind in KINDS))
        for elapsed, split in node["split"]:
            print("  " + f"{elapsed:>6.0f}" + "".join(f"{split[kind]:>17.0f}" for kind in KINDS))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="seconds of load per setting")
    parser.add_argument(
        "--release-memory",
        nargs="+",
        choices=("true", "false"),
        default=["false", "true"],
        help="the nodes' release_memory settings to run, one load run each",
    )
    args = parser.parse_args(argv)
    if args.seconds < WINDOW_S:
        parser.error(f"--seconds must be at least {WINDOW_S}")
    print(
        f"Node memory under load: {LOAD_ENCODER['model']} q{LOAD_ENCODER['quality']} on the CPU, "
        f"{CAMERA_HZ:.0f} Hz images + {CAMERA_HZ / SCAN_EVERY:.0f} Hz scans for {args.seconds:.0f} s, "
        f"encoder work queue {SHIPPED_ENCODER['work_queue_size']} ({REPO.name}/config parameter files)"
    )
    for setting in args.release_memory:
        with tempfile.TemporaryDirectory(prefix="pcic_ros_memory_") as run_dir:
            release_memory = setting == "true"
            report(args.seconds, release_memory, run_load(args.seconds, release_memory, Path(run_dir)))


if __name__ == "__main__":
    main()
