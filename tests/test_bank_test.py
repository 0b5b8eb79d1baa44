"""The bank test at CI size: writes (top-ups, bonuses some of which expire within seconds, spends,
transfers, holds with their capture or void, spends with a partial refund) with retries while the
service is SIGKILLed and PostgreSQL crash-restarts and lots expire; every acknowledged write must
exist exactly once, balances must match what was acknowledged less what expired, and the lots must
verify.
The full-size run is `make bank-test` (64 clients, 20,000 operations, 3 kills, 1 crash)."""

from __future__ import annotations

import pytest
from tools.bank_test import run_bank_test


@pytest.mark.slow
def test_no_acknowledged_write_is_lost_or_doubled_across_crashes():
    report = run_bank_test(
        clients=16, operations=1_200, users=20, server_kills=2, postgres_restarts=1, timeout_s=2.0, seed=11
    )
    print(report.render())
    assert report.ok, report.render()
    assert report.server_kills == 2
    assert report.postgres_restarts == 1
    # Every operation got its answers; chains (hold then capture or void, spend then refund) have two.
    assert report.acknowledged + report.refused_insufficient >= 1_200
    assert report.acknowledged > 600
    for step in ("topup", "spend", "transfer", "hold", "capture", "void", "refund"):
        assert report.acknowledged_by_step[step] > 0, report.render()
    # Credits did expire during the run (the service's task and spends), and were accounted for.
    assert report.expired > 0, report.render()
    # The faults really interrupted requests: some were retried.
    assert sum(report.retries_by_reason.values()) > 0
