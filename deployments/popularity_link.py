"""The way replicas talk to the popularity tracker without ever making a request wait on it.

Every call has a timeout and failures are swallowed (logged once per outage): the tracker's state is soft, a
request never depends on it. While Serve replaces a dead tracker, calls fail fast and routing goes by load."""
import asyncio
import logging
from collections import Counter
from typing import Any

from ray.serve.handle import DeploymentHandle

logger = logging.getLogger("ray.serve")


class PopularityLink:
    def __init__(self, tracker: DeploymentHandle, timeout_s: float) -> None:
        self.tracker = tracker
        self.timeout_s = timeout_s
        self.available = True

    async def call(self, method: str, *args: Any, wait_s: float | None = None) -> Any | None:
        """The tracker method's result, or None if it cannot answer within `wait_s` (default `timeout_s`)."""
        try:
            result = await asyncio.wait_for(getattr(self.tracker, method).remote(*args), wait_s or self.timeout_s)
        except Exception as error:  # noqa: BLE001 - the tracker is optional for every request; never let it fail one
            if self.available:
                logger.warning("popularity tracker unavailable (%r); routing by load until it is back", error)
            self.available = False
            return None
        if not self.available:
            logger.info("popularity tracker is reachable again")
        self.available = True
        return result


class PopularityFeed:
    """Counts requests per adapter locally and sends the counts to the tracker every `flush_s` seconds."""

    def __init__(self, link: PopularityLink, flush_s: float) -> None:
        self.link = link
        self.flush_s = flush_s
        self._counts: Counter[str | None] = Counter()

    def count(self, adapter: str | None) -> None:
        self._counts[adapter] += 1

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            if self._counts:
                counts, self._counts = dict(self._counts), Counter()
                await self.link.call("record", counts)  # lost counts on failure: the window is soft state
