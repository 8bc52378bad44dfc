"""Which adapter is merged, and switching it between steps: by hand (set_hot, unjudged), or following a choice
that the merge's own step costs judge (merge_gain.py): the engine's hot policy (auto_hot), or an adapter
assigned from outside (the Ray app's cluster-wide plan). An assignment, while there is one, is followed instead
of the policy; a switch by hand ends it, so the two never fight over the weights."""
import logging
import time

import torch

from fair_lora.errors import FairLoRAError, HotSwitchError
from fair_lora.hot_adapter.merge_gain import MergeGain
from fair_lora.hot_adapter.popularity import HotAdapterPolicy, PopularityWindow
from fair_lora.lora.adapter_pool import AdapterPool
from fair_lora.lora.hot_merge import HotMerger

logger = logging.getLogger("fair_lora")


class HotSwitch:
    def __init__(
        self, pool: AdapterPool, merger: HotMerger | None, policy: HotAdapterPolicy, window: PopularityWindow,
        gain: MergeGain | None = None,
    ) -> None:
        self.pool, self.merger, self.policy, self.window, self.gain = pool, merger, policy, window, gain
        self.probing: str | None = None  # unmerged for a moment, to measure what a merge is compared with
        self.hot: str | None = None
        self.followed: str | None = None  # the last judged choice (policy's or assignment's) that was acted on
        self.assigned: str | None = None
        self.assignment = False  # whether `assigned` is followed (None is an assignment too: keep nothing merged)
        self.switches: list[tuple[str | None, float]] = []  # (new hot adapter, seconds) of every switch

    def set_hot(self, name: str | None) -> float:
        """Merge `name` (None: restore the base weights); returns the switch time in seconds. All or nothing:
        if the merge fails part-way, every weight is restored and nothing is merged (HotSwitchError)."""
        if self.merger is None:
            raise FairLoRAError("mode='slora' never merges an adapter; use mode='fair'")
        if name == self.hot:
            return 0.0
        start = time.perf_counter()
        slot = self.pool.acquire(name) if name is not None else None  # pinned while merged; may refuse: no change
        try:
            if name is None:
                self.merger.restore()
            else:
                self.merger.merge(self.pool.get(name), slot)
        except Exception as error:  # noqa: BLE001 - half-merged weights would corrupt every later token
            self._fall_back_to_base(name)
            raise HotSwitchError(
                f"merging {name!r} failed ({error!r}); the base weights are restored and nothing is merged"
            ) from error
        if self.hot is not None:
            self.pool.release(self.hot)
        self.hot = name
        if self.gain is not None:
            self.gain.switched(name, self.window.shares().get(name, 0.0) if name is not None else 0.0)
        if self.merger.on_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        self.switches.append((name, seconds))
        return seconds

    def _fall_back_to_base(self, failed: str | None) -> None:
        self.merger.restore_all()
        for pinned in {failed, self.hot} - {None}:
            self.pool.release(pinned)
        self.hot = None

    def slot(self) -> int | None:
        """The merged adapter's device slot, which the correction subtracts."""
        if self.hot is None:
            return None
        # Its weights must be resident, or every cold token of the batch would be wrong.
        assert self.pool.pins[self.hot] > 0, "the merged adapter lost its slot pin"
        return self.pool.slot_of[self.hot]

    def set_by_hand(self, name: str | None) -> float:
        """set_hot for a caller that decides alone: it ends any assignment and probe (no judged follow undoes it;
        with auto_hot the policy takes over again when its choice next changes)."""
        self.assignment, self.probing = False, None
        return self.set_hot(name)

    def assign(self, name: str | None) -> float:
        """Follow `name` from now on, judged like the policy's choice: merged now if the gain allows (the switch's
        seconds; 0.0 if nothing changed), then tried, probed, undone and retried between steps."""
        if self.merger is None:
            raise FairLoRAError("mode='slora' never merges an adapter; use mode='fair'")
        if name is not None:
            self.pool.get(name)  # an unknown adapter fails the caller now rather than being followed silently
        if not self.assignment or name != self.assigned:
            self.followed = self.hot  # a new assignment acts at once, even on a choice followed before a manual switch
        self.assigned, self.assignment = name, True
        return self.follow(name)

    def between_steps(self, auto_hot: bool) -> None:
        try:
            if self.assignment:
                self.follow(self.assigned)
            elif auto_hot:
                self.follow_policy()
        except HotSwitchError as error:  # every weight is restored (set_hot): the step runs unmerged, as it may
            logger.warning("%s; it is tried again when the choice changes", error)

    def follow_policy(self) -> None:
        if self.merger is not None:
            self.follow(self.policy.choose(self.window))

    def follow(self, choice: str | None) -> float:
        """Act on `choice` once the gain has weighed it; the switch's seconds (0.0: nothing changed)."""
        if self.merger is None:
            return 0.0
        if self.gain is not None:
            choice = self._weigh(choice)
        # Follow changes of the choice only, so a manual switch stands until the policy moves; an adapter whose
        # slot cannot be had now (every slot pinned) is merged on a later step instead.
        if choice == self.followed or choice == self.hot:
            self.followed = choice
            return 0.0
        if choice is None or (choice in self.pool.adapters and self.pool.can_acquire(choice)):
            self.followed = choice  # also when the merge fails: not retried every step, only when the choice moves
            return self.set_hot(choice)
        return 0.0

    def declined(self) -> list[str]:
        """Adapters whose merge did not pay and is not to be tried again yet (merge_gain.py)."""
        return self.gain.declined(self.window.shares()) if self.gain is not None else []

    def snapshot(self) -> dict | None:
        if self.gain is None:
            return None
        assigned = {"assigned": self.assigned} if self.assignment else {}
        return {**self.gain.snapshot(), "declined": self.declined(), **assigned}

    def _weigh(self, choice: str | None) -> str | None:
        """The share rule's choice, unless the merge it asks for does not pay (merge_gain.py): a merged adapter
        whose trial shows no gain is undone, and one rejected before is not tried again yet."""
        gain = self.gain
        if self.probing is not None:
            if not gain.probe_done():
                return None
            adapter, self.probing = self.probing, None
            if gain.verdict() is False:
                gain.reject(adapter, self.window.shares().get(adapter, 0.0))
                return None
            return choice  # it pays (or the probe could not tell): merged again if the share rule still wants it
        if self.hot is not None and self.hot == choice:
            if gain.needs_probe():
                self.probing = choice
                return None
            if gain.verdict() is False:
                gain.reject(choice, self.window.shares().get(choice, 0.0))
                return None
            return choice
        if choice is not None and not gain.allows(choice, self.window.shares().get(choice, 0.0)):
            return None
        return choice

    def record_step(
        self, num_seqs: int, num_tokens: int, seconds: float, context: int, sole_adapter: str | None = None
    ) -> None:
        if self.gain is not None:
            self.gain.record(self.hot, num_seqs, num_tokens, seconds, context, sole_adapter)
