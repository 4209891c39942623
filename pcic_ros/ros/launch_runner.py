"""``pcic launch FILE [name:=value ...]``: run our XML launch files where ``ros2 launch`` is not installed.

Understands the subset of the ROS 2 XML launch format that launch/*.launch.xml use, with ``ros2
launch``'s scoping: ``arg`` (with default), ``let``, ``set_env``, ``include`` (with ``arg``),
``group`` (scoped, forwarding), ``node`` (pkg, exec, name, namespace,
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

from pcic_ros import package_share
from pcic_ros.errors import PcicError

__all__ = ["LaunchError", "Process", "NODE_MODULES", "parse_launch", "run", "add_parser"]

#: Executables of this package (nodes/ in the source tree, lib/pcic_ros on an install) -> module.
NODE_MODULES = {"encoder_node": "pcic_ros.ros.encoder_node", "decoder_node": "pcic_ros.ros.decoder_node"}


class LaunchError(PcicError, ValueError):
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


@dataclass
class _Scope:
    """The launch configurations (``arg``/``let`` values) and environment that elements see: shared with
    an ``include``, copied for a scoped ``group``, as in ROS 2's launch."""

    variables: dict[str, str]
    env: dict[str, str]

    def copy(self, forwarding: bool) -> _Scope:
        return _Scope(dict(self.variables), dict(self.env)) if forwarding else _Scope({}, {})


def parse_launch(path: str | Path, arguments: dict[str, str]) -> list[Process]:
    """The processes a launch file starts, with its includes and groups expanded.

    The scoping is ``ros2 launch``'s: command-line ``arguments`` are visible in every file, an
    ``arg`` only takes its default when nothing set it before, an ``include`` shares the scope of the
    file that includes it (its ``arg`` children and whatever the included file sets stay set after it),
    and only a ``group`` (scoped unless ``scoped="false"``) keeps what is set inside it from leaking.
    """
    processes: list[Process] = []
    _parse_file(Path(path), _Scope(dict(arguments), {}), processes)
    return processes


def _parse_file(path: Path, scope: _Scope, processes: list[Process]) -> None:
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as error:
        raise LaunchError(f"{path}: {error}") from None
    if root.tag != "launch":
        raise LaunchError(f"{path}: the root element is <{root.tag}>, not <launch>")
    _parse_elements(path, root, scope, processes)


def _flag(value: str, name: str, path: Path) -> bool:
    if value.lower() not in ("true", "false"):
        raise LaunchError(f"{path}: {name}='{value}' is neither true nor false")
    return value.lower() == "true"


def _parse_elements(path: Path, parent: ElementTree.Element, scope: _Scope, processes: list[Process]) -> None:
    for element in parent:
        tag = element.tag
        if not isinstance(tag, str):  # comments
            continue
        attributes = {key: _substitute(value, scope.variables) for key, value in element.attrib.items()}
        if tag == "arg":
            if attributes["name"] not in scope.variables and "default" in attributes:
                scope.variables[attributes["name"]] = attributes["default"]
        elif tag == "let":
            scope.variables[attributes["name"]] = attributes["value"]
        elif tag == "set_env":
            scope.env[attributes["name"]] = attributes["value"]
        elif tag == "include":
            for child in element:
                if child.tag == "arg":
                    scope.variables[child.attrib["name"]] = _substitute(child.attrib["value"], scope.variables)
            _parse_file(Path(attributes["file"]), scope, processes)
        elif tag == "group":
            if _flag(attributes.get("scoped", "true"), "scoped", path):
                inner = scope.copy(_flag(attributes.get("forwarding", "true"), "forwarding", path))
            else:
                inner = scope
            _parse_elements(path, element, inner, processes)
        elif tag == "node":
            processes.append(_node(element, attributes, scope.variables, scope.env))
        elif tag == "executable":
            command = shlex.split(attributes["cmd"])
            processes.append(Process(command, attributes.get("name", "executable"), dict(scope.env)))
        else:
            raise LaunchError(f"{path}: <{tag}> is not supported by pcic launch")


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
    launch = subparsers.add_parser("launch")
    launch.add_argument("file", help="launch file, e.g. launch/demo.launch.xml")
    launch.add_argument("arguments", nargs="*", help="launch arguments as name:=value")
    launch.add_argument("--print", action="store_true", help="print the commands instead of running them")
    launch.set_defaults(func=_launch)
