"""The package's layers: the codec library imports no ROS, bag, plotting or command-line code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Modules the codec library must not load (the ROS runtime, bags, plots, the CLI).
FORBIDDEN = ("rclpy", "rosbags", "matplotlib", "pcic_ros.cli", "pcic_ros.ros", "pcic_ros.bags", "pcic_ros.experiments")


@pytest.mark.parametrize(
    "statement", ["from pcic_ros.codec import Codec", "import pcic_ros.models", "import pcic_ros.codec.zoo"]
)
def test_the_codec_library_loads_no_ros_bags_plots_or_cli(statement):
    script = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    offending = [name for name in loaded if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)]
    assert "pcic_ros.codec.api" in loaded or "Codec" not in statement
    assert not offending, f"{statement} loads {offending}"


@pytest.mark.parametrize("arguments", [["--help"], ["info", "frame.pcic"], ["bag", "--help"], ["launch", "--help"]])
def test_commands_that_code_nothing_load_no_torch(arguments, tmp_path):
    """`pcic --help` and `pcic info` answer in a fraction of a second, not after loading torch (9-13 s)."""
    (tmp_path / "frame.pcic").write_bytes(b"\0" * 64)
    script = (
        "import json, sys\nfrom pcic_ros.cli import main\n"
        f"try:\n    main({arguments!r})\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert "torch" not in loaded and "compressai" not in loaded
