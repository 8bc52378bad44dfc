"""The way replicas talk to the popularity actor without ever making a request wait on it.

Every call has a timeout and failures are swallowed (logged once per outage): the actor's state is soft, a
request never depends on it. A permanently dead actor is re-created by the next call (get_if_exists)."""
import asyncio
import logging
from collections import Counter
from typing import Any

from ray.exceptions import ActorDiedError

from deployments.popularity_actor import NAMESPACE, PopularityActor, actor_name
from fair_lora.popularity import PopularityConfig

logger = logging.getLogger("ray.serve")
CREATE_TIMEOUT_S = 60.0


class PopularityLink:
    def __init__(self, app_name: str, config: PopularityConfig, timeout_s: float) -> None:
        self.name = actor_name(app_name)
        self.config = config
        self.timeout_s = timeout_s
        self._actor = None
        self._configured = False
        self.available = True

    async def call(self, method: str, *args: Any, wait_s: float | None = None) -> Any | None:
        """The actor method's result, or None if the actor cannot answer in time.

        `wait_s` bounds the whole call, creating the actor included; without it a new actor gets
        CREATE_TIMEOUT_S to start (background loops can wait), and every other call `timeout_s`."""
        try:
            actor = self._get_actor()
            if not self._configured:
                await asyncio.wait_for(actor.configure.remote(self.config), wait_s or CREATE_TIMEOUT_S)
                self._configured = True
            result = await asyncio.wait_for(getattr(actor, method).remote(*args), wait_s or self.timeout_s)
        except Exception as error:  # noqa: BLE001 - the actor is optional for every request; never let it fail one
            self._lost(error)
            return None
        if not self.available:
            logger.info("popularity actor %s is reachable again", self.name)
        self.available = True
        return result

    def _get_actor(self):
        if self._actor is None:
            self._actor = PopularityActor.options(
                name=self.name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
            ).remote(self.config)
            self._configured = False
        return self._actor

    def _lost(self, error: Exception) -> None:
        if isinstance(error, ActorDiedError):
            self._actor = None  # killed for good: the next call creates a new one
        if self.available:
            logger.warning("popularity actor %s unavailable (%r); routing by load until it is back", self.name, error)
        self.available = False


class PopularityFeed:
    """Counts requests per adapter locally and sends the counts to the actor every `flush_s` seconds."""

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
