"""What the benchmarks print about the machine they ran on, so a figure from another machine can be explained."""
import os
import re
import subprocess
from pathlib import Path

# the vector and matrix extensions that change a CPU's speed for these workloads
CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description():
    """(model name, the flags of CPU_FLAGS it has, threads per core) from /proc/cpuinfo and lscpu."""
    model, flags, threads = "unknown CPU", set(), "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        threads = re.search(r"Thread\(s\) per core:\s*(\S+)", lscpu).group(1)
    except (OSError, subprocess.SubprocessError, AttributeError):
        pass
    return model, [flag for flag in CPU_FLAGS if flag in flags], threads


def load_average():
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"
