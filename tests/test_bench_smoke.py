"""Every benchmark runs end to end on tiny inputs through `skylark bench`, prints its tables within
80 columns without cutting a number, and writes the same results as JSON with ``--json FILE``.

Nothing here asserts a speed (speed is what the benchmarks report, not what tests check); it
keeps the benchmarks working as the code under them changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name,args,expected", [
    ("storage", ["--sizes", "0.05", "--max-fields", "2", "--repeat", "3"],
     ["raw\nHSET", "raw\nN×GET", "Bundled / single"]),
    ("eventing", ["--entries", "60", "--paced", "20"], ["floor: XADD→XREADGROUP", "source → broker → sink"]),
    ("functions", ["--images", "blank", "--repeat", "2"], ["fetch", "compute", "store"]),
    ("propagate", ["--duration", "1", "--events", "100", "--samples", "0.05"],
     ["bare Flask", "CPU per propagated event", "raw copy"]),
    ("elect", ["--sizes", "10,50", "--repeat", "5"], ["Full election", "Data-path decision"]),
])
def test_bench_runs(name, args, expected, tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run([sys.executable, "-m", "skylark.cli", "bench", name, *args, "--json", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "…" not in result.stdout, result.stdout[-3000:]          # rich cut something
    assert max(len(line.rstrip()) for line in lines) <= 80, max(lines, key=len)
    document = json.loads(out.read_text())
    assert document["bench"] == name and document["tables"]
    headers = {column for table in document["tables"] for column in table["columns"]}
    for text in expected:
        flat = text.replace("\n", " ")
        assert flat in headers or any(flat in t["title"] or any(flat in str(r) for r in t["rows"])
                                      for t in document["tables"]), (text, sorted(headers))
    for table in document["tables"]:
        assert all(set(row) == set(table["columns"]) for row in table["rows"])
