"""CPU accounting shared by the benchmarks (Linux /proc)."""

import os


def process_cpu(pid):
    """User + system CPU seconds *pid* (and its threads) has used, or None
    when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            fields = stream.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
