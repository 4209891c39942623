"""The launch files name only things that exist: nodes, executables, parameter files and parameters,
remapped topics, included files; and pcic launch reads them."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pcic_ros import package_share
from pcic_ros.bags.messages import _message_definition_dirs
from pcic_ros.cli import build_parser, main
from pcic_ros.ros.launch_runner import NODE_MODULES, LaunchError, parse_launch

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.xml"))
ARGUMENTS = {"bag": "/nonexistent/bag"}


def module_source(executable: str) -> str:
    return Path(importlib.util.find_spec(NODE_MODULES[executable]).origin).read_text()


def declared_parameters(executable: str) -> dict[str, object]:
    """Name -> default of the node's parameter table."""
    return {spec.name: spec.default for spec in importlib.import_module(NODE_MODULES[executable]).PARAMETERS}


def test_launch_files_exist():
    assert {path.name for path in LAUNCH_FILES} == {"vehicle.launch.xml", "base_station.launch.xml", "demo.launch.xml"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda path: path.name)
def test_everything_a_launch_file_names_exists(path):
    processes = parse_launch(path, ARGUMENTS)
    assert processes
    cmake = (REPO / "CMakeLists.txt").read_text()
    for process in processes:
        if not process.executable:
            # Executables other than our nodes are pcic subcommands.
            assert process.command[0] == "pcic"
            build_parser().parse_args(process.command[1:])
            continue
        script = REPO / "nodes" / process.executable
        assert script.is_file() and os.access(script, os.X_OK)
        assert f"nodes/{process.executable}" in cmake
        source = module_source(process.executable)
        declared = set(declared_parameters(process.executable))
        topics = set(re.findall(r'create_(?:subscription|publisher)\(\w+, "(\w+)"', source))
        assert process.param_files
        for param_file in process.param_files:
            parameters = yaml.safe_load(param_file.read_text())["/**"]["ros__parameters"]
            assert set(parameters) <= declared, set(parameters) - declared
        assert set(process.remaps) <= topics, set(process.remaps) - topics
        pairs = zip(process.command[:-1], process.command[1:], strict=True)
        overrides = [value for flag, value in pairs if flag == "-p"]
        assert {override.split(":=")[0] for override in overrides} <= declared


def test_parameter_files_set_every_declared_parameter_to_a_value_of_its_type_in_its_range():
    for executable, config in (("encoder_node", "encoder.yaml"), ("decoder_node", "decoder.yaml")):
        parameters = yaml.safe_load((REPO / "config" / config).read_text())["/**"]["ros__parameters"]
        table = importlib.import_module(NODE_MODULES[executable]).PARAMETERS
        assert {spec.name for spec in table} == set(parameters), config
        for spec in table:
            # A float parameter takes an integer in a YAML file as on the command line.
            assert spec.check(parameters[spec.name]) == parameters[spec.name], spec.name
            expected = (float, int) if isinstance(spec.default, float) else type(spec.default)
            assert isinstance(parameters[spec.name], expected), spec.name


def test_missing_required_argument_and_unknown_tags_are_reported(tmp_path):
    with pytest.raises(LaunchError, match="bag"):
        parse_launch(REPO / "launch" / "demo.launch.xml", {})
    odd = tmp_path / "odd.launch.xml"
    odd.write_text('<launch><timer period="1"><node pkg="pcic_ros" exec="encoder_node"/></timer></launch>')
    with pytest.raises(LaunchError, match="timer"):
        parse_launch(odd, {})


def test_each_end_of_the_demo_gets_its_own_parameters_and_topics():
    encoder, decoder, _ = parse_launch(REPO / "launch" / "demo.launch.xml", {"bag": "/data/drive"})
    assert [path.name for path in encoder.param_files] == ["encoder.yaml"]
    assert [path.name for path in decoder.param_files] == ["decoder.yaml"]
    assert encoder.remaps["image"] == "/camera/image_rect" and decoder.remaps["image"] == "/pcic/image"


def test_includes_share_their_scope_and_only_a_group_keeps_it(tmp_path):
    """As ros2 launch scopes them: an arg declared by one include is seen by the next, unless a group
    holds it; a command-line argument reaches every file."""
    child = tmp_path / "child.launch.xml"
    child.write_text(
        '<launch><arg name="topic" default="$(var first)"/>'
        '<node pkg="pcic_ros" exec="encoder_node"><remap from="image" to="$(var topic)"/></node></launch>'
    )

    def topics(body: str, arguments: dict[str, str]) -> list[str]:
        (tmp_path / "parent.launch.xml").write_text(f"<launch>{body}</launch>")
        return [process.remaps["image"] for process in parse_launch(tmp_path / "parent.launch.xml", arguments)]

    include = f'<include file="{child}"/>'
    first = '<let name="first" value="/a"/>'
    second = '<let name="first" value="/b"/>'
    assert topics(first + include + second + include, {}) == ["/a", "/a"]
    assert topics(f"{first}<group>{include}</group>{second}<group>{include}</group>", {}) == ["/a", "/b"]
    assert topics(f'{first}<group scoped="false">{include}</group>{second}{include}', {}) == ["/a", "/a"]
    assert topics(first + include, {"topic": "/given"}) == ["/given"]
    with pytest.raises(LaunchError, match="first"):
        topics(f'{first}<group forwarding="false">{include}</group>', {})


def test_pcic_launch_prints_the_node_commands(capsys):
    assert main(["launch", str(REPO / "launch" / "demo.launch.xml"), "bag:=/data/drive", "--print"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "pcic_ros.ros.encoder_node" in lines[0] and "__ns:=/vehicle" in lines[0]
    assert "pcic_ros.ros.decoder_node" in lines[1] and "image:=/pcic/image" in lines[1]
    assert lines[2] == "pcic bag play /data/drive --wait-for-subscribers 120 --subscribers /lidar/points=2"


def test_an_installed_package_finds_its_share_folder_and_runs_pcic(tmp_path, monkeypatch):
    """A colcon install: launch/, config/ and msg/ under share/pcic_ros of a prefix on
    AMENT_PREFIX_PATH (the bag tools read the message definitions there), and a pcic command that
    CMake installs to bin/ only with the Python sources (the venv keeps pip's)."""
    share = tmp_path / "install" / "share" / "pcic_ros"
    (share / "msg").mkdir(parents=True)
    (share / "package.xml").write_text((REPO / "package.xml").read_text())
    monkeypatch.setenv("AMENT_PREFIX_PATH", os.pathsep.join([str(tmp_path / "elsewhere"), str(share.parents[1])]))
    assert package_share() == share
    assert _message_definition_dirs()[0] == share / "msg"
    monkeypatch.delenv("AMENT_PREFIX_PATH")
    assert package_share() == REPO and (package_share() / "msg" / "CompressedFrame.msg").is_file()
    cmake = (REPO / "CMakeLists.txt").read_text()
    sources_only = cmake[cmake.index("if(PCIC_ROS_INSTALL_PYTHON_SOURCES)") : cmake.index("endif()")]
    assert "install(PROGRAMS bin/pcic DESTINATION bin)" in sources_only
    script = REPO / "bin" / "pcic"
    assert os.access(script, os.X_OK)
    done = subprocess.run([sys.executable, str(script), "info", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: pcic info" in done.stdout
