import json
import random
from collections import Counter

import pytest

from fair_lora.hot_adapter.popularity import HotAdapterPolicy, PopularityConfig, PopularityWindow, WorkerPlanner


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def full_window(clock: FakeClock, **overrides) -> PopularityWindow:
    """A window that holds exactly the last 100 requests, so each flush of 100 replaces it."""
    return PopularityWindow(PopularityConfig(**{"window_requests": 100, **overrides}), clock)


# --- PopularityWindow ---------------------------------------------------------------------------------


def test_requests_leave_the_window_after_window_s(clock):
    window = PopularityWindow(PopularityConfig(window_s=30.0, window_requests=None), clock)
    window.record("a", 3)
    clock.advance(10)
    window.record("b")
    clock.advance(20)
    assert window.counts() == {"a": 3, "b": 1}  # "a" is exactly 30 s old: not older than window_s yet
    clock.advance(0.5)
    assert window.counts() == {"b": 1}
    clock.advance(10)
    assert window.counts() == {} and window.total() == 0 and window.shares() == {}


def test_only_the_most_recent_window_requests_count(clock):
    window = PopularityWindow(PopularityConfig(window_requests=5), clock)
    window.record("a", 3)
    clock.advance(1)
    window.record("b", 4)  # cuts through the older "a" bucket
    assert window.counts() == {"a": 1, "b": 4}
    clock.advance(1)
    for _ in range(5):
        window.record("c")
    assert window.counts() == {"c": 5} and window.total() == 5


def test_merge_counts_adds_a_replica_flush_at_the_current_time(clock):
    window = PopularityWindow(PopularityConfig(window_s=10.0, window_requests=None), clock)
    window.merge_counts({"a": 7, "b": 2, None: 1, "zero": 0})
    clock.advance(5)
    window.merge_counts({"a": 3})
    assert window.counts() == {"a": 10, "b": 2, None: 1}
    clock.advance(6)  # the first flush expires as a whole
    assert window.counts() == {"a": 3}


def test_merge_counts_refuses_negative_counts(clock):
    window = PopularityWindow(PopularityConfig(), clock)
    with pytest.raises(ValueError, match="must be >= 0"):
        window.merge_counts({"a": -1})


def test_large_flush_is_cut_to_the_request_cap(clock):
    window = PopularityWindow(PopularityConfig(window_requests=1000), clock)
    window.merge_counts({"a": 10**9, None: 10**9})
    assert window.total() == 1000
    assert sum(window.counts().values()) == 1000


def test_shares_exclude_base_but_base_counts_in_total(clock):
    window = PopularityWindow(PopularityConfig(), clock)
    window.merge_counts({None: 50, "a": 30, "b": 20})
    assert window.total() == 100
    assert window.shares() == {"a": 0.3, "b": 0.2}


def test_snapshot_is_json_with_base_under_its_own_key(clock):
    window = PopularityWindow(PopularityConfig(window_s=12.0), clock)
    window.merge_counts({None: 2, "a": 1})
    snapshot = json.loads(json.dumps(window.snapshot()))
    assert snapshot == {"total": 3, "counts": {"__base__": 2, "a": 1}, "window_s": 12.0}


# --- HotAdapterPolicy ---------------------------------------------------------------------------------


def test_enter_share_not_above_exit_share_is_refused(clock):
    bad = PopularityConfig(enter_share=0.3, exit_share=0.3)
    with pytest.raises(ValueError, match="enter_share above exit_share"):
        HotAdapterPolicy(bad, clock)
    with pytest.raises(ValueError):
        WorkerPlanner(2, bad, clock)


def test_first_hot_choice_needs_no_dwell_and_min_requests_gates_it(clock):
    window = PopularityWindow(PopularityConfig(min_requests=10), clock)
    policy = HotAdapterPolicy(window.config, clock)
    window.record("a", 9)
    assert policy.choose(window) is None
    window.record("a")
    assert policy.choose(window) == "a" and policy.current == "a"


def test_share_oscillating_around_enter_share_switches_at_most_once(clock):
    window = full_window(clock)
    policy = HotAdapterPolicy(window.config, clock)
    switches, last = 0, None
    for step in range(100):
        share = 55 if step % 2 == 0 else 45
        window.merge_counts({"a": share, None: 100 - share})
        clock.advance(10)  # past min_dwell_s: only hysteresis holds the choice
        switches += policy.choose(window) != last
        last = policy.current
    assert switches == 1 and policy.current == "a"


def test_hot_adapter_drifting_between_exit_and_enter_stays_hot(clock):
    window = full_window(clock)
    policy = HotAdapterPolicy(window.config, clock)
    window.merge_counts({"a": 60, "b": 40})
    assert policy.choose(window) == "a"
    rng = random.Random(0)
    for _ in range(200):
        clock.advance(10)
        a = rng.randint(31, 49)
        window.merge_counts({"a": a, "b": 100 - a})
        assert policy.choose(window) == "a"


def test_hot_below_exit_is_replaced_by_an_adapter_above_enter_or_by_none(clock):
    window = full_window(clock)
    policy = HotAdapterPolicy(window.config, clock)
    window.merge_counts({"a": 90, "b": 10})
    assert policy.choose(window) == "a"
    clock.advance(10)
    window.merge_counts({"a": 20, "b": 80})
    assert policy.choose(window) == "b"
    clock.advance(10)
    window.merge_counts({"a": 25, "b": 25, "c": 25, None: 25})
    assert policy.choose(window) is None


def test_min_dwell_delays_every_switch_including_to_none(clock):
    window = full_window(clock, min_dwell_s=5.0)
    policy = HotAdapterPolicy(window.config, clock)
    window.merge_counts({"a": 100})
    assert policy.choose(window) == "a"
    clock.advance(1)
    window.merge_counts({"b": 100})
    assert policy.choose(window) == "a"
    clock.advance(4)
    assert policy.choose(window) == "b"
    clock.advance(1)
    window.merge_counts({None: 100})
    assert policy.choose(window) == "b"
    clock.advance(4)
    assert policy.choose(window) is None


def test_too_few_requests_keep_the_current_hot(clock):
    window = PopularityWindow(PopularityConfig(window_s=10.0, min_requests=10), clock)
    policy = HotAdapterPolicy(window.config, clock)
    window.record("a", 10)
    assert policy.choose(window) == "a"
    clock.advance(20)
    window.record("b", 9)  # "b" is all of the window, but 9 requests are not evidence
    assert policy.choose(window) == "a"


# --- WorkerPlanner ------------------------------------------------------------------------------------


def planned(clock: FakeClock, num_workers: int, counts: dict) -> list:
    window = full_window(clock)
    window.merge_counts(counts)
    return WorkerPlanner(num_workers, window.config, clock).plan(window)


def test_dominant_adapter_holds_a_worker(clock):
    assert planned(clock, 1, {"a": 85, "b": 15}) == ["a"]
    assert "a" in planned(clock, 2, {"a": 80, "b": 10, None: 10})


def test_two_hot_adapters_spread_over_workers(clock):
    assert sorted(planned(clock, 2, {"a": 45, "b": 45, "c": 10})) == ["a", "b"]
    assert Counter(planned(clock, 4, {"a": 45, "b": 45, "c": 10})) == {"a": 2, "b": 2}


def test_very_hot_adapter_takes_workers_in_proportion(clock):
    assert planned(clock, 4, {"a": 95, "b": 3, None: 2}).count("a") >= 3
    assert Counter(planned(clock, 4, {"a": 60, "b": 40})) == {"a": 2, "b": 2}
    assert Counter(planned(clock, 4, {"a": 60, None: 40})) == {"a": 2, None: 2}


def test_workers_with_nothing_worth_merging_get_none(clock):
    uniform = {f"adapter{i}": 10 for i in range(10)}
    assert planned(clock, 2, uniform) == [None, None]


def test_plan_does_not_change_with_too_few_requests(clock):
    window = PopularityWindow(PopularityConfig(min_requests=10), clock)
    planner = WorkerPlanner(2, window.config, clock)
    window.record("a", 9)
    assert planner.plan(window) == [None, None]


def test_same_adapter_set_keeps_its_workers_when_shares_swap(clock):
    window = full_window(clock)
    planner = WorkerPlanner(2, window.config, clock)
    window.merge_counts({"a": 60, "b": 40})
    first = planner.plan(window)
    assert sorted(first) == ["a", "b"]
    for a in (40, 55, 45, 50):
        clock.advance(10)
        window.merge_counts({"a": a, "b": 100 - a})
        assert planner.plan(window) == first


def test_restarted_planner_adopts_the_workers_merges_and_keeps_them(clock):
    """A new popularity actor learns what each worker holds merged; its first plan keeps those that still
    deserve a seat, where a planner starting from nothing would place them in its own order."""
    window = full_window(clock)
    window.merge_counts({"a": 60, "b": 40})
    fresh = WorkerPlanner(2, window.config, clock).plan(window)
    restarted = WorkerPlanner(2, window.config, clock)
    restarted.adopt(0, fresh[1])
    restarted.adopt(1, fresh[0])
    assert restarted.plan(window) == [fresh[1], fresh[0]]  # no merge moves
    clock.advance(1)  # adopted merges have no dwell to wait out: a shift re-plans at once
    window.merge_counts({"c": 1000})
    assert sorted(restarted.plan(window), key=str) == ["c", "c"]


def test_new_hot_adapter_takes_a_free_worker_and_the_held_one_stays(clock):
    window = full_window(clock)
    planner = WorkerPlanner(2, window.config, clock)
    window.merge_counts({"a": 45, None: 55})
    assert planner.plan(window) == ["a", None]
    clock.advance(1)  # inside min_dwell_s: only worker 1, never assigned, may change
    window.merge_counts({"a": 45, "b": 45, None: 10})
    assert planner.plan(window) == ["a", "b"]


def test_held_worker_keeps_its_adapter_between_exit_and_enter_share(clock):
    window = full_window(clock)
    planner = WorkerPlanner(1, window.config, clock)
    window.merge_counts({"a": 60, None: 40})
    assert planner.plan(window) == ["a"]
    for a in (40, 31, 45, 35):
        clock.advance(10)
        window.merge_counts({"a": a, None: 100 - a})
        assert planner.plan(window) == ["a"]
    clock.advance(10)
    window.merge_counts({"a": 29, None: 71})
    assert planner.plan(window) == [None]


def test_challenger_must_beat_a_held_seat_by_the_hysteresis_gap(clock):
    window = full_window(clock)
    planner = WorkerPlanner(1, window.config, clock)
    window.merge_counts({"a": 60, "b": 40})
    assert planner.plan(window) == ["a"]
    clock.advance(10)
    window.merge_counts({"a": 40, "b": 55, None: 5})  # b ahead, but by less than enter - exit
    assert planner.plan(window) == ["a"]
    clock.advance(10)
    window.merge_counts({"a": 35, "b": 65})
    assert planner.plan(window) == ["b"]


def test_a_worker_changes_at_most_once_per_min_dwell(clock):
    window = full_window(clock, min_dwell_s=5.0)
    planner = WorkerPlanner(2, window.config, clock)
    window.merge_counts({"a": 50, "b": 50})
    first = planner.plan(window)
    clock.advance(1)
    window.merge_counts({"c": 100})
    assert planner.plan(window) == first
    clock.advance(4)
    assert planner.plan(window) == ["c", "c"]


def test_resize_keeps_assignments_and_fills_new_workers(clock):
    window = full_window(clock)
    planner = WorkerPlanner(2, window.config, clock)
    window.merge_counts({"a": 45, "b": 45, None: 10})
    first = planner.plan(window)
    planner.resize(4)
    assert planner.current == first + [None, None]
    assert planner.plan(window)[:2] == first  # new workers are free to take seats at once
    assert Counter(planner.current) == {"a": 2, "b": 2}
    planner.resize(1)
    assert planner.current == first[:1]


def test_traffic_shifting_from_a_to_b_moves_workers_without_a_switch_storm(clock):
    window = PopularityWindow(PopularityConfig(), clock)  # defaults: 30 s and 1000 requests
    planner = WorkerPlanner(2, window.config, clock)
    rng = random.Random(1)
    changes, seen, last = 0, [], planner.current
    steps = 600
    for step in range(steps):
        share_a = 0.9 - 0.8 * step / steps
        flush = Counter(rng.choices(["a", "b", None], [share_a * 0.95, (1 - share_a) * 0.95, 0.05], k=20))
        window.merge_counts(dict(flush))
        clock.advance(1)
        plan = planner.plan(window)
        changes += sum(old != new for old, new in zip(last, plan))
        last = plan
        if not seen or seen[-1] != sorted(plan, key=str):
            seen.append(sorted(plan, key=str))
    assert seen == [["a", "a"], ["a", "b"], ["b", "b"]]
    assert changes == 4  # two first assignments, then one hand-over per worker: noise never flips one back


# --- WorkerPlanner with declined merges ---------------------------------------------------------------


def test_a_declined_adapters_seats_go_to_nobody_and_the_others_keep_theirs(clock):
    """a (60%) and b (40%) take two workers each of four; a declined (its merge did not pay on a worker) frees
    its two seats, but b, whose own share warrants two, does not take them: b's share is not renormalised to
    100% as if a's requests had not been seen. A c at 20% would not get a seat from a either."""
    window = full_window(clock)
    window.merge_counts({"a": 60, "b": 40})
    assert Counter(WorkerPlanner(4, window.config, clock).plan(window, declined=frozenset({"a"}))) == {"b": 2, None: 2}
    window.merge_counts({"a": 60, "b": 20, "c": 20})
    assert WorkerPlanner(2, window.config, clock).plan(window, declined=frozenset({"a"})) == [None, None]
    assert WorkerPlanner(2, window.config, clock).plan(window) == ["a", None], "without the decline a takes a seat"


def test_a_declined_adapter_leaves_its_worker_once_the_dwell_is_over_and_comes_back_when_no_longer_declined(clock):
    window = full_window(clock, min_dwell_s=5.0)
    planner = WorkerPlanner(2, window.config, clock)
    window.merge_counts({"a": 45, "b": 45, None: 10})
    first = planner.plan(window)
    assert sorted(first) == ["a", "b"]
    clock.advance(1)
    assert planner.plan(window, declined=frozenset({"a"})) == first, "dwell: a worker changes at most once per 5 s"
    clock.advance(4)
    expected = [None if adapter == "a" else adapter for adapter in first]
    assert planner.plan(window, declined=frozenset({"a"})) == expected, "b's worker untouched"
    clock.advance(5)
    assert planner.plan(window) == first, "no longer declined: a takes its seat again"


def test_declined_adapters_leave_the_hysteresis_of_the_others_intact(clock):
    """b held between exit and enter share stays held while a, declined, holds no seat; a challenger still
    needs to beat b by the hysteresis gap."""
    window = full_window(clock)
    planner = WorkerPlanner(1, window.config, clock)
    window.merge_counts({"b": 60, None: 40})
    assert planner.plan(window) == ["b"]
    clock.advance(10)
    window.merge_counts({"a": 50, "b": 35, None: 15})
    assert planner.plan(window, declined=frozenset({"a"})) == ["b"]
    clock.advance(10)
    window.merge_counts({"b": 40, "c": 55, None: 5})  # c ahead, but by less than enter - exit
    assert planner.plan(window, declined=frozenset({"a"})) == ["b"]
