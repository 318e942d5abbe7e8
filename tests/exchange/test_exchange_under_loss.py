"""At 20 % injected loss, 20 patients' conversations all arrive exactly once, none later than
two minutes after it was recorded (issue 18's acceptance; the benchmark with the same scenario
is tests/perf/bench_exchange_loss.py, its figures in the README)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.exchange.lossy_exchange import DEPLOYED, exactly_once, run_phase, start_pair

PATIENTS = 20
LOSS = 0.2
BOUND_SECONDS = 120.0


@pytest.mark.slow  # two real instances and a proxy, about a minute
def test_twenty_conversations_arrive_exactly_once_within_two_minutes_at_20_percent_loss(
    tmp_path: Path,
) -> None:
    """Each patient: three statements, two goals, a ranking, a re-ranking, recorded at the
    hospital one patient after the other; the proxy in front of the GP drops, resets after
    forwarding, answers 503 to or delays a random 20 % of the requests.

    The two-minute bound is the issue's bound on completion, a correctness bound on retries and
    backoff (a retry that restarts every look-up, or a backoff that grows unbounded, took 12.7
    minutes for one patient), not a micro-timing: with the deployed outbox settings (poll 0.5 s,
    backoff from 1 s capped at 300 s) patients complete in about ten seconds on a shared 2-core
    machine (README, Benchmarks), so the bound leaves a wide margin for a loaded machine while
    still failing a retry schedule that stalls.
    """
    hospital, gp, proxy = start_pair(tmp_path, DEPLOYED)
    try:
        run = run_phase(hospital, gp, proxy, range(1, PATIENTS + 1), LOSS, seed=18)
        assert exactly_once(hospital, gp, [run]) == []
    finally:
        hospital.stop()
        gp.stop()
        proxy.stop()
    assert run.faults > 0.1 * run.requests, (run.faults, run.requests)  # the loss was real
    slowest = max(run.patients, key=lambda p: p.seconds)
    assert slowest.seconds < BOUND_SECONDS, (
        f"patient {slowest.number} took {slowest.seconds:.1f} s: {run.stats()}"
    )
