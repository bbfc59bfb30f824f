"""The fault suite: real processes on loopback, faults injected from outside while writes go on
(bench/faults.py does the injecting; ``skylark bench faults`` prints the same as a table).

Invariants checked, not assumed: every write ends up on every node the policy pushes it to (what
was dead-lettered on the way is replayed first); no bundle anywhere fails its checksum; no copy's
version ever goes back; a killed gunicorn master takes its workers with it and is restarted by the
supervisor; a killed Redis comes back with its state; hostile deliveries get 4xx JSON answers and
change nothing."""

from __future__ import annotations

import argparse

from bench import faults


def test_no_write_is_lost_whatever_is_killed_or_sent():
    outcome = faults.run(argparse.Namespace(rate=20.0, down=15.0, converge=60.0, base_port=None))
    by_fault = {r.fault: r for r in outcome.results}
    for result in outcome.results:
        assert result.lost == 0, (result.fault, result.notes)
        assert result.converged_s is not None, result.fault
        assert result.writes > 0, result.fault  # the writes went on through every fault
    assert outcome.torn == [] and outcome.went_back == []
    # the supervisor restarted what was killed; the killed master's worker did not outlive it
    assert by_fault["handlers master -9"].restarts == 1 and outcome.orphans == 0
    assert by_fault["Redis -9, restart"].restarts == 1
    before, after = outcome.redis_versions
    assert before > 0 and after >= before, outcome.redis_versions  # AOF: nothing acknowledged was lost
    # the broker down 15 s: the changes piled up pending (retried, dead-lettered once they fail five
    # times: tests/test_deadletters.py) and the newest bundles got through once it was back
    assert by_fault["broker down 15 s"].lost == 0 and by_fault["broker down 15 s"].writes > 100
    # duplicates and the older copy: 202 (duplicate / stale), the forged one 403, the oversized 413
    assert by_fault["hostile deliveries"].hostile == {"202": 3, "403": 1, "413": 1}
    assert "holds v3" in by_fault["hostile deliveries"].notes
