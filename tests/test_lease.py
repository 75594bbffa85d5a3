"""Sans-IO client-go Lease decisions (wgpy.supervisor.lease), driven by a float clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from wgpy.core.errors import ConfigError
from wgpy.supervisor.lease import (
    Action,
    ElectionConfig,
    Elector,
    LeaseRecord,
    format_microtime,
    microtime,
    parse_microtime,
    retry_interval,
)

WALL = datetime(2026, 3, 4, 5, 6, 7, 250000, tzinfo=UTC)


def cfg(identity: str = "me", *, lease_duration: float = 15.0, renew_deadline: float = 10.0,
        retry_period: float = 2.0) -> ElectionConfig:
    return ElectionConfig("plndr-cp-lock", "kube-system", identity, lease_duration,
                          renew_deadline, retry_period)


def other(holder: str = "them", *, duration: int = 15, transitions: int = 3,
          renew: datetime = WALL) -> LeaseRecord:
    return LeaseRecord(holder, duration, renew - timedelta(minutes=5), renew, transitions)


@pytest.mark.parametrize(("kw", "msg"), [
    ({"lease_duration": 10, "renew_deadline": 10}, "greater than renew deadline"),
    ({"renew_deadline": 2.4, "retry_period": 2}, "retry period*1.2"),
    ({"retry_period": 0}, "retry period must be positive"),
    ({"lease_duration": float("nan")}, "lease duration must be positive"),
    ({"lease_duration": 0.9, "renew_deadline": 0.5, "retry_period": 0.1}, "at least 1 s"),
])
def test_config_validation_as_client_go(kw: dict[str, float], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg.replace("*", r"\*")):
        cfg("me", **kw)


def test_config_accepts_defaults_and_boundaries() -> None:
    c = cfg()
    assert (c.lease_duration, c.renew_deadline, c.retry_period) == (15, 10, 2)
    assert cfg(renew_deadline=2.5, retry_period=2).renew_deadline == 2.5
    assert cfg(lease_duration=15.9).duration_seconds == 15          # truncated like Go
    with pytest.raises(ConfigError, match="identity"):
        cfg(identity="")
    with pytest.raises(ConfigError, match="name and namespace"):
        ElectionConfig("", "ns", "me")


def test_microtime_is_true_utc_with_six_digits_never_zero_fraction() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    t = microtime(datetime(2026, 1, 1, 17, 27, 5, 0, tzinfo=ist))
    assert t.microsecond == 1 and t.utcoffset() == timedelta(0)
    assert format_microtime(t) == "2026-01-01T11:57:05.000001Z"
    assert t.isoformat() == "2026-01-01T11:57:05.000001+00:00"   # what the client sends
    assert format_microtime(WALL) == "2026-03-04T05:06:07.250000Z"
    assert microtime(WALL) == WALL
    with pytest.raises(ValueError, match="aware"):
        microtime(datetime(2026, 1, 1))
    for text in ("2026-03-04T05:06:07.250000Z", "2026-03-04T10:36:07.25+05:30"):
        assert parse_microtime(text) == WALL


def test_record_json_roundtrip_and_go_format() -> None:
    rec = LeaseRecord("n1", 15, WALL, WALL + timedelta(seconds=2), 4, {"a": "b"})
    spec = rec.to_spec()
    assert spec == {"holderIdentity": "n1", "leaseDurationSeconds": 15, "leaseTransitions": 4,
                    "acquireTime": "2026-03-04T05:06:07.250000Z",
                    "renewTime": "2026-03-04T05:06:09.250000Z"}
    back = LeaseRecord.from_lease({"metadata": {"annotations": {"a": "b"}}, "spec": spec})
    assert back == rec and back.annotations == {"a": "b"}
    empty = LeaseRecord.from_lease({"metadata": {}, "spec": {}})
    assert (empty.holder, empty.duration_s, empty.transitions) == ("", 0, 0)
    # annotations are not part of record equality (client-go compares the record only)
    assert LeaseRecord("n1", 15, WALL, WALL, 4, {"x": "y"}) == LeaseRecord("n1", 15, WALL,
                                                                            WALL, 4)
    assert "key" not in repr(rec).lower()


def test_create_when_missing() -> None:
    el = Elector(cfg())
    d = el.decide(None, now=100.0, wall=WALL.replace(microsecond=0))
    assert d.action is Action.CREATE and d.record is not None
    assert (d.record.holder, d.record.duration_s, d.record.transitions) == ("me", 15, 0)
    assert d.record.acquire_time == d.record.renew_time
    assert d.record.renew_time is not None and d.record.renew_time.microsecond == 1
    el.succeeded(d.record, now=100.0)
    assert el.is_leader() and el.lease_valid(now=114.9) and not el.lease_valid(now=115.0)


def test_follower_waits_record_duration_after_last_observed_change() -> None:
    el = Elector(cfg())
    assert el.decide(other(duration=5), now=10.0, wall=WALL).action is Action.FOLLOW
    # the same record read again does not restart the clock...
    assert el.decide(other(duration=5), now=14.9, wall=WALL).action is Action.FOLLOW
    # ...a renewal (any change) does
    renewed = other(duration=5, renew=WALL + timedelta(seconds=2))
    assert el.decide(renewed, now=14.9, wall=WALL).action is Action.FOLLOW
    assert el.observed_time == 14.9
    assert el.decide(renewed, now=19.8, wall=WALL).action is Action.FOLLOW
    d = el.decide(renewed, now=19.9, wall=WALL)      # 14.9 + 5 (the record's duration)
    assert d.action is Action.UPDATE and d.record is not None
    assert d.record.transitions == 4 and d.record.holder == "me"
    assert d.record.acquire_time == WALL and d.record.duration_s == 15


def test_lease_timestamps_are_never_trusted() -> None:
    """A holder whose clock is 3 h behind (or ahead) is respected while it renews."""
    el = Elector(cfg())
    for i, skew in enumerate((timedelta(hours=-3), timedelta(hours=3))):
        rec = other(renew=WALL + skew + timedelta(seconds=i))
        assert el.decide(rec, now=50.0 + i, wall=WALL).action is Action.FOLLOW


def test_empty_holder_is_free_immediately_and_counts_a_transition() -> None:
    el = Elector(cfg())
    released = LeaseRecord("", 1, WALL, WALL, 7)
    d = el.decide(released, now=1.0, wall=WALL)
    assert d.action is Action.UPDATE and d.record is not None and d.record.transitions == 8


def test_holder_renews_keeping_acquire_time_and_transitions() -> None:
    el = Elector(cfg())
    mine = LeaseRecord("me", 15, WALL - timedelta(hours=1), WALL, 2)
    el.succeeded(mine, now=4.0)                          # we wrote it
    later = WALL + timedelta(seconds=2)
    d = el.decide(mine, now=5.0, wall=later)
    assert d.action is Action.UPDATE and d.record is not None
    assert (d.record.acquire_time, d.record.transitions) == (mine.acquire_time, 2)
    assert d.record.renew_time == later


def test_fast_path_only_while_leader_and_valid() -> None:
    el = Elector(cfg(lease_duration=3, renew_deadline=2, retry_period=1))
    assert el.fast_path(now=0.0, wall=WALL) is None
    d = el.decide(None, now=0.0, wall=WALL)
    assert d.record is not None
    el.succeeded(d.record, now=0.0)
    rec = el.fast_path(now=1.0, wall=WALL + timedelta(seconds=1))
    assert rec is not None and rec.acquire_time == WALL and rec.transitions == 0
    assert rec.renew_time == WALL + timedelta(seconds=1)
    assert el.fast_path(now=3.0, wall=WALL) is None     # our own lease expired locally


def test_renew_deadline_and_step_down() -> None:
    el = Elector(cfg(lease_duration=3, renew_deadline=2, retry_period=1))
    assert el.must_step_down(now=0.0)                    # never renewed: not leading
    d = el.decide(None, now=10.0, wall=WALL)
    assert d.record is not None
    el.succeeded(d.record, now=10.0)
    assert el.renew_time_left(now=11.5) == pytest.approx(0.5)
    assert not el.must_step_down(now=11.99) and el.must_step_down(now=12.0)


def test_release_record() -> None:
    el = Elector(cfg())
    assert el.release_record(wall=WALL) is None          # not the holder: nothing to release
    el.succeeded(LeaseRecord("me", 15, WALL, WALL, 5, {"k": "v"}), now=1.0)
    rel = el.release_record(wall=WALL.replace(microsecond=0))
    assert rel is not None
    assert (rel.holder, rel.duration_s, rel.transitions) == ("", 1, 5)
    assert rel.acquire_time == rel.renew_time and rel.renew_time is not None
    assert rel.renew_time.microsecond == 1 and rel.annotations == {"k": "v"}


def test_annotations_written_with_next_record_and_read_back() -> None:
    el = Elector(cfg())
    el.succeeded(LeaseRecord("me", 15, WALL, WALL, 0, {"keep": "1", "drop": "x"}), now=0.0)
    assert el.annotation("keep") == "1" and el.annotation("floor") is None
    el.set_annotation("floor", "4000000069a7b8c7")
    el.set_annotation("drop", None)
    assert el.annotation("floor") == "4000000069a7b8c7" and el.annotation("drop") is None
    rec = el.fast_path(now=1.0, wall=WALL)
    assert rec is not None and rec.annotations == {"keep": "1", "floor": "4000000069a7b8c7"}
    el.succeeded(rec, now=1.0)
    # a later change by someone else is what we read afterwards (pending list is empty)
    el.observe(LeaseRecord("me", 15, WALL, WALL, 0, {"floor": "5"}), now=2.0)
    assert el.annotation("floor") == "5"
    assert el.observed_time == 1.0                      # annotations alone are no change


def test_new_leader_reported_once_per_change() -> None:
    el = Elector(cfg())
    el.decide(other("a"), now=0.0, wall=WALL)
    assert el.new_leader() == "a" and el.new_leader() is None
    el.decide(other("a", renew=WALL + timedelta(seconds=1)), now=1.0, wall=WALL)
    assert el.new_leader() is None
    el.decide(other("b"), now=2.0, wall=WALL)
    assert el.new_leader() == "b"


class FixedRng:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_retry_interval_jitter() -> None:
    assert retry_interval(2.0, FixedRng(0.0)) == 2.0
    assert retry_interval(2.0, FixedRng(0.5)) == pytest.approx(3.2)
    rng = random.Random(7)
    vals = [retry_interval(2.0, rng) for _ in range(200)]
    assert all(2.0 <= v < 4.4 for v in vals) and max(vals) - min(vals) > 1.5


# -- issue 15 -------------------------------------------------------------------------------


def test_a_record_naming_us_that_we_did_not_write_is_someone_elses() -> None:
    """kube-vip on this node holds plndr-cp-lock under the same identity (the node name): we
    follow while it renews, and take over with a new term (transitions + 1) once it expires."""
    el = Elector(cfg("node-1"))
    kube_vip = other("node-1", duration=15, transitions=4)
    assert el.decide(kube_vip, now=0.0, wall=WALL).action is Action.FOLLOW
    assert not el.is_leader() and el.held_by_other(now=1.0)
    renewed = other("node-1", duration=15, transitions=4, renew=WALL + timedelta(seconds=2))
    assert el.decide(renewed, now=10.0, wall=WALL).action is Action.FOLLOW
    assert el.decide(renewed, now=24.9, wall=WALL).action is Action.FOLLOW
    d = el.decide(renewed, now=25.0, wall=WALL + timedelta(seconds=30))   # expired
    assert d.action is Action.UPDATE and d.record is not None
    assert d.record.transitions == 5 and d.record.acquire_time == WALL + timedelta(seconds=30)
    el.attempting(d.record)
    el.succeeded(d.record, now=25.0)
    assert el.is_leader() and not el.held_by_other(now=26.0)


def test_a_leader_sees_another_writer_under_its_name() -> None:
    el = Elector(cfg("node-1"))
    d = el.decide(None, now=0.0, wall=WALL)
    assert d.record is not None
    el.attempting(d.record)
    el.succeeded(d.record, now=0.0)
    assert el.is_leader()
    foreign = LeaseRecord("node-1", 15, WALL, WALL + timedelta(seconds=1), 0)
    assert el.decide(foreign, now=1.0, wall=WALL).action is Action.FOLLOW
    assert not el.is_leader() and el.held_by_other(now=1.0)


def test_a_write_whose_reply_was_lost_is_still_recognised_as_ours() -> None:
    el = Elector(cfg("node-1"))
    first = el.decide(None, now=0.0, wall=WALL).record
    assert first is not None
    el.attempting(first)
    el.succeeded(first, now=0.0)
    renewal = el.fast_path(now=2.0, wall=WALL + timedelta(seconds=2))
    assert renewal is not None
    el.attempting(renewal)                               # sent; the reply never came
    d = el.decide(renewal, now=3.0, wall=WALL + timedelta(seconds=3))
    assert d.action is Action.UPDATE and d.record is not None
    assert d.record.transitions == 0 and d.record.acquire_time == first.acquire_time


def test_carried_over_acquire_time_never_has_a_zero_fraction() -> None:
    """acquireTime ending in .000000 would be serialised without its fraction (400)."""
    el = Elector(cfg())
    whole = WALL.replace(microsecond=0)
    el.succeeded(LeaseRecord("me", 15, whole, WALL, 2), now=0.0)
    rec = el.fast_path(now=1.0, wall=WALL)
    assert rec is not None and rec.acquire_time is not None
    assert rec.acquire_time.microsecond != 0
    assert abs((rec.acquire_time - whole).total_seconds()) < 1e-5

