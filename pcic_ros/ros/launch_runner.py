"""``pcic launch FILE [name:=value ...]``: run our XML launch files where ``ros2 launch`` is not installed.

Understands the subset of the ROS 2 XML launch format that launch/*.launch.xml use: ``arg`` (with
default), ``let``, ``set_env``, ``include`` (with ``arg``), ``node`` (pkg, exec, name, namespace,
``param`` from a file or by name/value, ``remap``) and ``executable`` (cmd); substitutions ``$(var)``,
``$(env NAME [default])`` and ``$(find-pkg-share pcic_ros)``. Each node and executable runs as a
child process; SIGINT/SIGTERM are passed on to them, and the launch ends when all have exited.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LaunchError", "Process", "NODE_MODULES", "package_share", "parse_launch", "run", "add_parser"]

#: Executables of this package (nodes/ in the source tree, lib/pcic_ros on an install) -> module.
NODE_MODULES = {"encoder_node": "pcic_ros.ros.encoder_node", "decoder_node": "pcic_ros.ros.decoder_node"}


class LaunchError(ValueError):
    """A launch file uses something this runner does not know, or names something missing."""


@dataclass
class Process:
    """One child process a launch file describes."""

    command: list[str]
    name: str
    env: dict[str, str] = field(default_factory=dict)
    param_files: list[Path] = field(default_factory=list)
    remaps: dict[str, str] = field(default_factory=dict)
    executable: str = ""


def package_share() -> Path:
    """Where pcic_ros keeps launch/ and config/: the installed share folder, else the source tree."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        share = Path(prefix) / "share" / "pcic_ros"
        if prefix and (share / "launch").is_dir():
            return share
    return Path(__file__).resolve().parents[2]


def _substitute(text: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        kind, _, rest = match.group(1).strip().partition(" ")
        words = rest.split()
        if kind == "var":
            if rest.strip() not in variables:
                raise LaunchError(f"launch argument '{rest.strip()}' has no value (give it as {rest.strip()}:=...)")
            return variables[rest.strip()]
        if kind == "env":
            return os.environ.get(words[0], " ".join(words[1:]))
        if kind == "find-pkg-share" and words == ["pcic_ros"]:
            return str(package_share())
        raise LaunchError(f"unsupported substitution $({match.group(1)})")

    return re.sub(r"\$\(([^)]*)\)", replace, text)


def parse_launch(path: str | Path, arguments: dict[str, str]) -> list[Process]:
    """The processes a launch file starts, with its includes expanded."""
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as error:
        raise LaunchError(f"{path}: {error}") from None
    if root.tag != "launch":
        raise LaunchError(f"{path}: the root element is <{root.tag}>, not <launch>")
    variables: dict[str, str] = {}
    env: dict[str, str] = {}
    processes: list[Process] = []
    for element in root:
        tag = element.tag
        if not isinstance(tag, str):  # comments
            continue
        attributes = {key: _substitute(value, variables) for key, value in element.attrib.items()}
        if tag == "arg":
            name = attributes["name"]
            if name in arguments:
                variables[name] = arguments[name]
            elif "default" in attributes:
                variables[name] = attributes["default"]
        elif tag == "let":
            variables[attributes["name"]] = attributes["value"]
        elif tag == "set_env":
            env[attributes["name"]] = attributes["value"]
        elif tag == "include":
            included_arguments = {}
            for child in element:
                if child.tag == "arg":
                    included_arguments[child.attrib["name"]] = _substitute(child.attrib["value"], variables)
            for process in parse_launch(attributes["file"], included_arguments):
                process.env = {**env, **process.env}
                processes.append(process)
        elif tag == "node":
            processes.append(_node(element, attributes, variables, env))
        elif tag == "executable":
            processes.append(Process(shlex.split(attributes["cmd"]), attributes.get("name", "executable"), dict(env)))
        else:
            raise LaunchError(f"{path}: <{tag}> is not supported by pcic launch")
    return processes


def _node(element: ElementTree.Element, attributes: dict[str, str], variables: dict[str, str], env: dict) -> Process:
    if attributes.get("pkg") != "pcic_ros" or attributes.get("exec") not in NODE_MODULES:
        raise LaunchError(f"unknown node {attributes.get('pkg')}/{attributes.get('exec')}")
    name = attributes.get("name", attributes["exec"])
    arguments = ["--ros-args", "-r", f"__node:={name}"]
    if "namespace" in attributes:
        arguments += ["-r", f"__ns:=/{attributes['namespace'].strip('/')}"]
    process = Process([], name, dict(env), executable=attributes["exec"])
    for child in element:
        child_attributes = {key: _substitute(value, variables) for key, value in child.attrib.items()}
        if child.tag == "param" and "from" in child_attributes:
            process.param_files.append(Path(child_attributes["from"]))
            arguments += ["--params-file", child_attributes["from"]]
        elif child.tag == "param":
            arguments += ["-p", f"{child_attributes['name']}:={child_attributes['value']}"]
        elif child.tag == "remap":
            process.remaps[child_attributes["from"]] = child_attributes["to"]
            arguments += ["-r", f"{child_attributes['from']}:={child_attributes['to']}"]
        elif isinstance(child.tag, str):
            raise LaunchError(f"<{child.tag}> inside <node> is not supported by pcic launch")
    process.command = [sys.executable, "-m", NODE_MODULES[attributes["exec"]], *arguments]
    return process


def run(processes: list[Process]) -> int:
    """Start every process, pass SIGINT/SIGTERM on, and wait; the worst exit status is returned."""
    children = []
    for process in processes:
        print(f"[pcic launch] {process.name}: {shlex.join(process.command)}", flush=True)
        children.append(subprocess.Popen(process.command, env={**os.environ, **process.env}))
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(child.poll() is None for child in children):
            time.sleep(0.1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    # A node stopped by our forwarded signal ends normally; anything else counts.
    return max((abs(child.returncode) for child in children if not received or child.returncode > 0), default=0)


def _launch(args: argparse.Namespace) -> int:
    arguments = {}
    for item in args.arguments:
        name, separator, value = item.partition(":=")
        if not separator:
            raise LaunchError(f"launch arguments are name:=value, got '{item}'")
        arguments[name] = value
    processes = parse_launch(args.file, arguments)
    if args.print:
        for process in processes:
            print(shlex.join(process.command))
        return 0
    return run(processes)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    launch = subparsers.add_parser("launch", help="run a launch/*.launch.xml file without ros2 launch")
    launch.add_argument("file", help="launch file, e.g. launch/demo.launch.xml")
    launch.add_argument("arguments", nargs="*", help="launch arguments as name:=value")
    launch.add_argument("--print", action="store_true", help="print the commands instead of running them")
    launch.set_defaults(func=_launch)
