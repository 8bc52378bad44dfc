"""Fair scheduling through the Ray Serve app: with scheduling_policy vtc, a client that floods the queue does not
starve a light one (the light client is named by X-Client-Id and by the OpenAI `user` field), and /stats shows
the tokens each client was served, summed over the workers."""
import asyncio

import httpx
import pytest

from tests.serve_fixtures import demo_config_args, deploy, undeploy, wait_for

pytestmark = pytest.mark.ray
pytest_plugins = ["tests.serve_fixtures"]

ARGS = {
    **demo_config_args(), "scheduling_policy": "vtc", "max_num_seqs": 2, "max_waiting": 64,
    "workers": {**demo_config_args()["workers"], "num_replicas": 1, "max_queued_requests": 64},
    "routing": {"stats_period_s": 0.2, "flush_s": 0.05, "assignment_poll_s": 0.1},
}


@pytest.fixture(scope="module")
def app(ray_cluster):
    served = deploy(ray_cluster, "fairness_app", ARGS)
    yield served
    undeploy(served)


def test_a_flooding_client_does_not_starve_a_light_one(app):
    flood = [({"x-client-id": "heavy"}, {"model": "adapter-0", "prompt": f"flood {i}", "max_tokens": 32}) for i in range(24)]
    light = [({}, {"model": "adapter-1", "prompt": f"light {i}", "user": "light", "max_tokens": 8}) for i in range(4)]
    finished: list[str] = []

    async def run():
        async with httpx.AsyncClient(base_url=app.url, timeout=120) as client:

            async def one(headers: dict, body: dict, who: str):
                body = {**body, "temperature": 0, "ignore_eos": True}
                response = await client.post("/v1/completions", json=body, headers=headers)
                assert response.status_code == 200, response.text
                finished.append(who)

            heavy = [asyncio.create_task(one(h, b, "heavy")) for h, b in flood]
            await asyncio.sleep(0.5)  # the flood is queued first (it takes seconds to serve)
            await asyncio.gather(*heavy, *(one(h, b, "light") for h, b in light))

    asyncio.run(run())
    last_light = max(i for i, who in enumerate(finished) if who == "light")
    assert last_light < len(finished) // 2, f"the light client waited for most of the flood: {finished}"

    def served() -> dict:
        return app.stats()["popularity"]["service"]

    service = wait_for(lambda: {"heavy", "light"} <= set(served()) and served(), timeout=10, what="service per client")
    assert service["heavy"] > service["light"] > 0
