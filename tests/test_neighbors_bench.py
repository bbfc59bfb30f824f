"""The election benchmark runs end to end on small sizes and prints its table (no timing asserted)."""

from __future__ import annotations

from bench import elect as bench_elect


def test_bench_elect_runs_and_prints_the_thesis_figures(capsys):
    assert bench_elect.main(["--sizes", "10,100", "--repeat", "5"]) == 0
    out = capsys.readouterr().out
    assert "Full election" in out and "floor p50" in out and "thesis" in out
    assert "Data-path decision" in out and "= elect" in out
    assert max(len(line) for line in out.splitlines()) <= 80  # readable in an 80-column terminal
    assert "13.000" in out   # the thesis's 100-node figure, beside ours


def test_generated_graphs_have_the_thesis_shape():
    topology = bench_elect.generate_topology(1000, seed=1)
    assert len(topology.nodes) == 1000 and len(topology.links) == 2000   # mean degree 4
    assert {l.latency_ms for l in topology.links} <= set(map(float, range(2, 11)))
    assert bench_elect.generate_topology(1000, seed=1) == topology      # seeded
