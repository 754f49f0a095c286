"""The Lease rule (one active operator) and what the operator exports, as pure functions."""

import datetime as dt

import pytest

from coprocessor.settings import Settings
from fhe_operator.leader import LeaseRecord, Move, decide, identity, lease_body
from fhe_operator.probes import finished_stages, phase_counts

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def record(holder, seconds_ago, duration=15.0, version="7", transitions=2):
    renewed = None if seconds_ago is None else T0 - dt.timedelta(seconds=seconds_ago)
    return LeaseRecord(holder, renewed, duration, transitions, version)


@pytest.mark.parametrize(
    ("lease", "unchanged_for_s", "expected"),
    [
        (None, 0, Move.CREATE),
        (record("me", 100), 100, Move.RENEW),  # ours, even if late: renewing is safe
        (record("other", 3), 3, Move.WAIT),
        (record("other", 3), 14.9, Move.WAIT),
        (record("other", 3), 15, Move.TAKE_OVER),  # unchanged for a whole duration
        # Its renewTime says an hour ago (another node's clock), yet we saw it change
        # a moment ago: it is alive, skew does not make us take over.
        (record("other", 3600), 1, Move.WAIT),
        (record(None, 1), 0, Move.TAKE_OVER),  # released
    ],
)
def test_decide(lease, unchanged_for_s, expected):
    assert decide(lease, "me", unchanged_for_s) is expected


def test_taking_over_counts_a_transition_and_carries_the_version_read():
    body = lease_body("op", "fhe", "me", T0, 15, record("other", 60))
    assert body["metadata"] == {"name": "op", "namespace": "fhe", "resourceVersion": "7"}
    spec = body["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("me", 3)
    assert spec["acquireTime"] == spec["renewTime"] == "2026-12-01T12:00:00.000000Z"
    assert spec["leaseDurationSeconds"] == 15


def test_renewing_keeps_the_acquire_time_and_the_transitions():
    spec = lease_body("op", "fhe", "me", T0, 15, record("me", 5))["spec"]
    assert "acquireTime" not in spec and spec["leaseTransitions"] == 2


def test_a_released_lease_is_expired_and_has_no_holder():
    spec = lease_body("op", "fhe", "me", T0, 15, record("me", 1), release=True)["spec"]
    assert spec["holderIdentity"] == ""
    released = LeaseRecord(None, dt.datetime.fromisoformat(spec["renewTime"]), 15)
    assert decide(released, "next", 0) is Move.TAKE_OVER


def test_identities_differ_per_process_start(monkeypatch):
    monkeypatch.setenv("POD_NAME", "fhe-operator-abc")
    first, second = identity(), identity()
    assert first.startswith("fhe-operator-abc_") and first != second


@pytest.mark.parametrize(("renew", "deadline", "duration"), [(5, 10, 10), (10, 5, 15), (5, 20, 15)])
def test_lease_timings_that_could_overlap_two_leaders_are_refused(renew, deadline, duration):
    with pytest.raises(ValueError, match="renew_s < renew_deadline_s < duration_s"):
        Settings(
            operator_leader_election=True,
            operator_lease_renew_s=renew,
            operator_lease_renew_deadline_s=deadline,
            operator_lease_duration_s=duration,
        )


def test_phase_counts_report_zero_for_phases_no_batch_has_any_more():
    counts = phase_counts({("a", "x"): "Succeeded", ("a", "y"): "Succeeded", ("b", "z"): None})
    assert counts["Succeeded"] == 2 and counts["Computing"] == 0 and counts["Failed"] == 0


def test_a_stage_is_observed_once_when_it_finishes():
    running = {"stages": {"compute": {"state": "Running"}}}
    done = {"stages": {"compute": {"state": "Succeeded", "summary": {"seconds": 3.5}}}}
    assert finished_stages(running, done) == [("compute", {"seconds": 3.5})]
    assert finished_stages(done, done) == []
    assert finished_stages({}, {"stages": {"sns": {"state": "Failed"}}}) == [("sns", {})]


def test_a_stage_shown_done_before_its_pod_ended_is_observed_when_its_summary_comes():
    """One pod of several stages: compute shows Succeeded (from the database) while the
    pod squashes; its summary, with its seconds, comes only with the pod's end."""
    shown_done = {"stages": {"compute": {"state": "Succeeded"}}}
    ended = {"stages": {"compute": {"state": "Succeeded", "summary": {"seconds": 2.5}}}}
    assert finished_stages({"stages": {"compute": {"state": "Running"}}}, shown_done) == [
        ("compute", {})
    ]
    assert finished_stages(shown_done, ended) == [("compute", {"seconds": 2.5})]
    assert finished_stages(ended, ended) == []
