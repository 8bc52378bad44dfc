"""A rolling update under load: the app is deployed again with a changed config (an adapter added, the worker
count changed, the popularity settings changed) while requests, whole and streamed, keep coming. Not one of
them may fail; afterwards the new config is what serves."""
import asyncio
import threading

import httpx
import pytest
from ray import serve

from deployments import build_app
from tests.serve_fixtures import demo_config_args, deploy, stream_completion, undeploy, wait_for

pytestmark = pytest.mark.ray
pytest_plugins = ["tests.serve_fixtures"]

ARGS = {"max_num_seqs": 8, "routing": {"stats_period_s": 0.2, "flush_s": 0.05, "assignment_poll_s": 0.1}}
CONCURRENCY = 4


@pytest.fixture(scope="module")
def app(ray_cluster):
    served = deploy(ray_cluster, "roll_app", {**demo_config_args(), **ARGS})
    yield served
    undeploy(served)


class Traffic:
    """CONCURRENCY clients sending requests (every other one streamed) until stopped; each outcome is kept."""

    def __init__(self, url: str) -> None:
        self.url, self.outcomes, self.stop = url, [], threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=120) as client:
            await asyncio.gather(*(self._client(client, c) for c in range(CONCURRENCY)))

    async def _client(self, client: httpx.AsyncClient, c: int) -> None:
        i = 0
        while not self.stop.is_set():
            body = {"model": f"adapter-{(c + i) % 3}", "prompt": f"roll {c} {i}", "max_tokens": 12, "temperature": 0}
            if i % 2:
                result = await stream_completion(client, body)
                ok = result.status == 200 and result.done and result.error is None and result.finish_reason
                self.outcomes.append(("stream", result.status, None if ok else result))
            else:
                response = await client.post("/v1/completions", json=body)
                self.outcomes.append(("whole", response.status_code, None if response.status_code == 200 else response.text))
            i += 1

    def failures(self) -> list:
        return [o for o in self.outcomes if o[1] != 200 or o[2] is not None]


def test_a_changed_config_deployed_under_load_fails_no_request(app, offline_engine):
    extra = str(offline_engine.model_dir.parent / "adapters" / "adapter-3")
    new = {
        **app.args,
        "adapters": {**app.args.get("adapters", {}), "added": extra},
        "workers": {**app.args["workers"], "num_replicas": 1},
        "popularity": {**app.args["popularity"], "min_dwell_s": 9.0},
    }
    traffic = Traffic(app.url)
    traffic.thread.start()
    wait_for(lambda: len(traffic.outcomes) >= 8, timeout=60, what="traffic to flow before the update")
    before = len(traffic.outcomes)
    serve.run(build_app(new), name=app.name, route_prefix=f"/{app.name}", blocking=False)

    def updated() -> bool:
        try:
            stats = app.stats()
        except httpx.HTTPError:
            return False
        workers = stats["workers"]
        return (len(workers) == 1 and "added" in workers[0].get("adapters", ())
                and (stats["popularity"] or {}).get("config", {}).get("min_dwell_s") == 9.0)

    wait_for(updated, timeout=120, what="the new config to serve", interval=0.5)
    settled = len(traffic.outcomes)
    assert settled - before >= CONCURRENCY, "the update was not under load"
    wait_for(lambda: len(traffic.outcomes) >= settled + 8, timeout=60, what="traffic to flow after the update")
    traffic.stop.set()
    traffic.thread.join(timeout=120)
    assert not traffic.failures(), f"{len(traffic.failures())} of {len(traffic.outcomes)} failed: {traffic.failures()[:5]}"
    with app.client() as c:
        reply = c.post("/v1/completions", json={"model": "added", "prompt": "new", "max_tokens": 4})
        assert reply.status_code == 200, reply.text
