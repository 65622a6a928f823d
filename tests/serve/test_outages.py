"""How loadtest tells an outage from a stray failure: failures in a row, ended only by a request sent
after the first of them (no server needed)."""

from __future__ import annotations

from aspp_deploy.serve.loadtest import OutageTracker


def tracker(max_consecutive: int = 20) -> OutageTracker:
    return OutageTracker(0.0, max_consecutive, ("grpc://127.0.0.1:1", "aspp", 4))


def test_a_request_in_flight_when_the_failures_began_does_not_end_them():
    """Four clients, the server killed at t=10: one client's request, sent at 9.9, is answered at 10.2 after
    another's failed at 10.1. That answer says nothing of the server after the kill, so every failure
    until the server answers a request sent after 10.1 is one outage."""
    t = tracker()
    t.failure(10.1, "Socket closed")
    t.success(9.9, 10.2)  # sent before the first failure: ignored
    for k in range(8):
        t.failure(10.3 + k, "unavailable")
    t.success(20.0, 20.1)  # sent after the failures began: the server is back
    [outage] = t.outages
    assert outage.errors == 9 and outage.recovered and outage.start_s == 10.1
    assert outage.length_s == round(20.1 - 10.1, 3) and outage.first_error == "Socket closed"


def test_a_stray_failure_is_not_an_outage_and_a_later_answer_ends_it():
    t = tracker()
    t.failure(5.0, "timeout")
    t.success(5.5, 5.6)
    t.failure(7.0, "timeout")
    t.failure(7.1, "timeout")
    t.success(7.2, 7.3)
    assert t.outages == [] and t.run == 0  # fewer than OUTAGE_MIN_ERRORS in a row, each time


def test_the_level_stops_after_the_bound_and_an_open_run_is_an_outage_not_over():
    t = tracker(max_consecutive=5)
    for k in range(5):
        t.failure(1.0 + k, "refused")
    assert t.stop.is_set()
    outage = t.open_outage(9.0)
    assert outage is not None and not outage.recovered and outage.errors == 5 and t.outages == [outage]
