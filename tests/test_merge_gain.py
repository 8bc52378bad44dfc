"""A merge the popularity window asks for stays only if the engine's own decode steps say it pays."""
import pytest

from fair_lora.errors import FairLoRAError, UnknownAdapterError
from fair_lora.hot_adapter.merge_gain import MergeGain, MergeGainConfig
from fair_lora import SamplingParams
from tests.engine_helpers import make_engine

QUICK = MergeGainConfig(trial_steps=4, probe_steps=2, settle_steps=0, retry_share=0.05, retry_s=60.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def greedy_params() -> SamplingParams:
    return SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)


def steps(gain: MergeGain, hot: str | None, n: int, us_per_token: float, batch: int = 8, context: int = 100) -> None:
    for _ in range(n):
        gain.record(hot, batch, batch, us_per_token * 1e-6 * batch, context * batch)


def test_a_merge_that_makes_decode_steps_dearer_is_rejected_until_its_share_grows_or_time_passes():
    clock = Clock()
    gain = MergeGain(QUICK, clock)
    steps(gain, None, 6, 10.0)
    gain.switched("a", 0.6)
    steps(gain, "a", 3, 12.0)
    assert gain.verdict() is None, "three merged steps are not a trial"
    steps(gain, "a", 1, 12.0)
    assert gain.verdict() is False
    gain.reject("a")
    assert not gain.allows("a", 0.62)
    assert gain.allows("a", 0.66), "its share grew by retry_share"
    gain.reject("a")
    clock.now = 61.0
    assert gain.allows("a", 0.6), "retry_s passed"


def test_a_step_whose_every_sequence_uses_the_rejected_adapter_lifts_the_rejection():
    """Merged, such a step runs no correction at all: the trial, judged while cold tokens shared every step, says
    nothing about it. A step of several adapters, or of another one alone, leaves the rejection standing."""
    gain = MergeGain(QUICK, Clock())
    steps(gain, None, 6, 10.0)
    gain.switched("a", 0.98)
    steps(gain, "a", 4, 10.3)  # cold tokens in every step: about what unmerged costs, a little more
    assert gain.verdict() is False
    gain.reject("a")
    gain.switched(None, 0.0)
    gain.record(None, 8, 8, 8e-5, 800, sole_adapter=None)
    assert not gain.allows("a", 0.98)
    gain.record(None, 8, 8, 8e-5, 800, sole_adapter="b")
    assert not gain.allows("a", 0.98)
    gain.record(None, 8, 8, 8e-5, 800, sole_adapter="a")
    assert gain.allows("a", 0.98) and "a" not in gain.rejected


def test_the_engine_reports_a_step_of_one_adapter_as_its_sole_adapter(demo):
    engine = make_engine(demo, auto_hot=True)
    seen = []
    engine.hot_switch.record_step = lambda *args: seen.append(args[-1])
    engine.generate([[5, 6, 7], [8, 9]], ["adapter-1", "adapter-1"], greedy_params())
    engine.generate([[5, 6, 7], [8, 9]], ["adapter-1", None], greedy_params())
    assert "adapter-1" in seen and seen[-1] is None


def test_a_merge_that_makes_decode_steps_cheaper_pays_and_prefill_steps_do_not_count():
    gain = MergeGain(QUICK, Clock())
    steps(gain, None, 6, 10.0)
    gain.switched("a", 0.9)
    for _ in range(5):
        gain.record("a", 4, 400, 1.0)  # a prefill step: not one token per sequence
    assert gain.verdict() is None
    steps(gain, "a", 4, 8.0)
    assert gain.verdict() is True
    assert gain.snapshot()["merged_us_per_token"] == {"8x128": 8.0}


def test_batch_sizes_and_contexts_are_compared_bucket_by_bucket():
    gain = MergeGain(QUICK, Clock())
    steps(gain, None, 4, 5.0, batch=128)  # big batches are cheaper per token
    steps(gain, None, 4, 20.0, batch=2)
    steps(gain, None, 4, 30.0, batch=2, context=1000)  # longer contexts dearer
    gain.switched("a", 0.9)
    steps(gain, "a", 4, 15.0, batch=2)  # dearer than big unmerged batches, cheaper than small ones
    assert gain.verdict() is True
    steps(gain, "a", 8, 25.0, batch=2, context=1000)  # cheaper than unmerged steps of its own context
    assert gain.verdict() is True


def test_without_unmerged_steps_to_compare_the_trial_asks_for_a_probe():
    gain = MergeGain(QUICK, Clock())
    gain.switched("a", 0.9)
    steps(gain, "a", 4, 10.0)
    assert gain.needs_probe() and gain.verdict() is None
    gain.switched(None, 0.0)  # the probe: unmerged, the trial's steps kept
    assert not gain.probe_done()
    steps(gain, None, 2, 9.0)
    assert gain.probe_done() and gain.verdict() is False


@pytest.mark.parametrize("merged_us,stays", [(14.0, False), (6.0, True)])
def test_the_engine_probes_then_keeps_or_undoes_its_merge(demo, merged_us, stays):
    engine = make_engine(demo, auto_hot=True)
    switch = engine.hot_switch
    switch.gain = MergeGain(QUICK, Clock())
    engine.window.record("adapter-1", 20)
    switch.follow_policy()
    assert engine.hot_adapter == "adapter-1", "the share rule merges it: a trial"
    steps(switch.gain, "adapter-1", 4, merged_us)
    switch.follow_policy()
    assert engine.hot_adapter is None and switch.probing == "adapter-1", "no unmerged steps yet: a probe"
    steps(switch.gain, None, 2, 10.0)
    switch.follow_policy()
    switch.follow_policy()
    assert engine.hot_adapter == ("adapter-1" if stays else None)
    assert ("adapter-1" in switch.gain.rejected) is not stays


def rejected_gain(clock: Clock, share: float = 0.6) -> MergeGain:
    """A gain whose trial of "a" (merged at `share`) showed dearer steps, and that rejected it at clock 0."""
    gain = MergeGain(QUICK, clock)
    steps(gain, None, 6, 10.0)
    gain.switched("a", share)
    steps(gain, "a", 4, 12.0)
    assert gain.verdict() is False
    gain.reject("a")
    gain.switched(None, 0.0)
    return gain


def test_declined_tells_which_rejections_hold_now_by_each_lift_rule_and_lifts_nothing():
    """declined() is what allows() would refuse, asked without asking allows(): the cluster's plan stops
    assigning a declined adapter, so nothing else would ever lift its rejection."""
    clock = Clock()
    gain = rejected_gain(clock)
    assert gain.declined({"a": 0.62}) == ["a"]
    assert gain.declined({"a": 0.66}) == [], "its share grew by retry_share"
    assert gain.declined({}) == ["a"], "an adapter absent from the window has share 0"
    clock.now = 59.0
    assert gain.declined({"a": 0.6}) == ["a"]
    clock.now = 60.0
    assert gain.declined({"a": 0.6}) == [], "retry_s passed"
    assert "a" in gain.rejected, "declined() changes nothing"
    assert gain.allows("a", 0.6) and "a" not in gain.rejected


def test_a_step_of_the_declined_adapter_alone_lifts_its_rejection_though_nobody_asks_about_it():
    gain = rejected_gain(Clock())
    gain.record(None, 8, 8, 8e-5, 800, sole_adapter="b")
    assert gain.declined({"a": 0.6}) == ["a"]
    gain.record(None, 8, 8, 8e-5, 800, sole_adapter="a")
    gain.record(None, 8, 8, 8e-5, 800, sole_adapter=None)  # a later mixed step does not bring it back
    assert gain.declined({"a": 0.6}) == [] and "a" not in gain.rejected


def test_a_rejection_waits_for_growth_past_the_share_its_verdict_came_at():
    """Behind the Ray app's router a worker's share of its merged adapter grows during the trial (the adapter's
    requests are sent to it): that growth must not retry at once the merge that just failed."""
    gain = MergeGain(QUICK, Clock())
    steps(gain, None, 6, 10.0)
    gain.switched("a", 0.6)
    steps(gain, "a", 4, 12.0)
    gain.reject("a", share=0.8)
    assert gain.declined({"a": 0.84}) == ["a"] and not gain.allows("a", 0.84)
    assert gain.declined({"a": 0.86}) == []


def assigned_engine(demo, clock: Clock):
    """An engine as the app's workers run it (auto_hot=False), with a quick trial and unmerged steps to compare."""
    engine = make_engine(demo)
    engine.hot_switch.gain = MergeGain(QUICK, clock)
    steps(engine.hot_switch.gain, None, 6, 10.0)
    return engine


def test_an_assigned_merge_that_does_not_pay_is_undone_reported_declined_and_merged_again_once_lifted(demo):
    clock = Clock()
    engine = assigned_engine(demo, clock)
    switch = engine.hot_switch
    assert engine.assign_hot_adapter("adapter-1") > 0.0
    assert engine.hot_adapter == "adapter-1", "merged at once: a trial"
    steps(switch.gain, "adapter-1", 4, 14.0)
    switch.between_steps(auto_hot=False)
    assert engine.hot_adapter is None
    assert engine.declined_merges() == ["adapter-1"] == engine.stats()["merge_gain"]["declined"]
    assert engine.stats()["merge_gain"]["assigned"] == "adapter-1"
    assert engine.assign_hot_adapter("adapter-1") == 0.0 and engine.hot_adapter is None, "still declined"
    clock.now = QUICK.retry_s
    assert engine.declined_merges() == []
    # step() follows the assignment between steps: base-model requests, so adapter-1's share stays 0 and only
    # the time lifted its rejection.
    engine.generate([[5, 6, 7]], [None], greedy_params())
    assert engine.hot_adapter == "adapter-1"


def test_an_assigned_merge_that_pays_stays(demo):
    clock = Clock()
    engine = assigned_engine(demo, clock)
    engine.assign_hot_adapter("adapter-2")
    steps(engine.hot_switch.gain, "adapter-2", 4, 6.0)
    for _ in range(3):
        engine.hot_switch.between_steps(auto_hot=False)
    assert engine.hot_adapter == "adapter-2" and engine.declined_merges() == []


def test_a_manual_switch_ends_the_assignment_and_a_new_assignment_acts_at_once(demo):
    engine = assigned_engine(demo, Clock())
    engine.assign_hot_adapter("adapter-1")
    engine.set_hot_adapter("adapter-2")
    assert not engine.hot_switch.assignment and "assigned" not in engine.stats()["merge_gain"]
    steps(engine.hot_switch.gain, "adapter-2", 4, 14.0)  # a manual merge is not judged: it stays however it costs
    engine.generate([[5, 6, 7]], [None], greedy_params())
    assert engine.hot_adapter == "adapter-2"
    engine.set_hot_adapter(None)
    assert engine.assign_hot_adapter("adapter-1") > 0.0 and engine.hot_adapter == "adapter-1", \
        "followed before the manual switches, assigned again: merged now"


def test_an_assignment_overrides_the_engines_own_policy(demo):
    engine = make_engine(demo, auto_hot=True, merge_trial_steps=0)
    engine.window.record("adapter-1", 20)
    engine.assign_hot_adapter("adapter-3")
    engine.generate([[5, 6, 7]], [None], greedy_params())
    assert engine.hot_adapter == "adapter-3"


def test_an_assignment_needs_a_known_adapter_and_fair_mode(demo):
    with pytest.raises(UnknownAdapterError):
        make_engine(demo).assign_hot_adapter("nope")
    slora = make_engine(demo, mode="slora")
    with pytest.raises(FairLoRAError):
        slora.assign_hot_adapter("adapter-1")
    assert slora.declined_merges() == [] and slora.stats()["merge_gain"] is None
