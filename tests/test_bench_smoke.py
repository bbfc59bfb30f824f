"""Every benchmark runs end to end on tiny inputs through `skylark bench` and prints its tables.

Nothing here asserts a speed (speed is what the benchmarks report, not what tests check); it
keeps the benchmarks working as the code under them changes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name,args,expected", [
    ("storage", ["--sizes", "0.05", "--max-fields", "2", "--repeat", "3"],
     ["raw HSET p50", "raw N×GET p50", "Bundled / single"]),
    ("eventing", ["--entries", "60", "--paced", "20"], ["floor: XADD→XREADGROUP", "source → broker → sink"]),
    ("functions", ["--images", "blank", "--repeat", "2"], ["fetch", "compute", "store"]),
    ("propagate", ["--duration", "1", "--events", "100", "--samples", "0.05"],
     ["bare Flask", "CPU per propagated event", "raw copy p50"]),
])
def test_bench_runs(name, args, expected):
    result = subprocess.run([sys.executable, "-m", "skylark.cli", "bench", name, *args], capture_output=True,
                            text=True, timeout=300, cwd=REPO, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for text in expected:
        assert text in result.stdout, (text, result.stdout[-3000:])
