"""pcic_ros.ros.memory: freed heap pages go back to the kernel, where glibc would keep them resident."""

import platform
import subprocess
import sys

import pytest

# Run in a fresh interpreter: the allocator's state (its mmap threshold, its heaps) must be the one
# this scenario builds, not whatever the test session left. Buffers of 2 MiB, like a KITTI scan: once
# the first is freed glibc serves the rest from its heap, and freeing every other one leaves holes
# that cannot shrink the heap from its top.
FRAGMENTED_HEAP = """
from pcic_ros.ros.memory import return_freed_memory

def resident_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

first = bytearray(2 << 20)
del first
buffers = [bytearray(b"x" * (2 << 20)) for _ in range(100)]
del buffers[::2]
before = resident_mib()
trimmed = return_freed_memory()
after = resident_mib()
print(trimmed, before, after)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_heap_holes_stop_counting_as_resident_memory():
    result = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True)
    trimmed, before, after = result.stdout.split()
    assert trimmed == "True"
    # 50 freed buffers of 2 MiB: about 100 MiB of holes, all given back.
    assert float(before) - float(after) > 80, result.stdout
