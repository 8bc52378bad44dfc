"""The worker's engine thread and text deltas, without Ray: concurrent requests share steps, an abort frees
its blocks, a crashed engine fails its requests instead of hanging them, and streamed text never retracts."""
import asyncio

import pytest

from deployments.engine_loop import EngineLoop, EngineLoopDead
from deployments.text_stream import TextStream
from fair_lora import EngineConfig, LLMEngine, SamplingParams


@pytest.fixture(scope="module")
def engine(demo):
    adapters = {n: str(p) for n, p in demo.adapters.items()}
    return LLMEngine(EngineConfig(model=str(demo.model_dir), adapters=adapters, auto_hot=False))


async def _finish(outputs: asyncio.Queue):
    while True:
        item = await outputs.get()
        if isinstance(item, BaseException) or item.finished:
            return item


def _add(loop: EngineLoop, engine: LLMEngine, request_id: str, adapter: str | None, max_tokens: int):
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return loop.add_request(request_id, lambda: engine.add_request("loop test", adapter, params, request_id))


def test_concurrent_requests_share_steps_and_match_generate(engine):
    adapters = [None, "adapter-0", "adapter-1", "adapter-2"]
    want = [o.token_ids for o in engine.generate(["loop test"] * 4, adapters, SamplingParams(max_tokens=8, ignore_eos=True))]
    batch_sizes: list[int] = []

    async def run():
        loop = EngineLoop(engine, lambda outputs: batch_sizes.append(engine.last_step.num_seqs))
        try:
            params = SamplingParams(max_tokens=8, ignore_eos=True)

            def adder(request_id: str, adapter: str | None):
                return lambda: engine.add_request("loop test", adapter, params, request_id)

            # One command: all four enter the engine before its first step, however the threads interleave.
            added = await loop.add_requests([(f"c{i}", adder(f"c{i}", a)) for i, a in enumerate(adapters)])
            queues = [outputs for outputs, _ in added]
            return await asyncio.gather(*(_finish(q) for q in queues))
        finally:
            loop.stop()

    finals = asyncio.run(run())
    assert [f.token_ids for f in finals] == want
    assert max(batch_sizes) > 1


def test_abort_frees_every_block(engine):
    async def run():
        loop = EngineLoop(engine, lambda outputs: None)
        try:
            outputs, _ = await _add(loop, engine, "long", "adapter-3", 400)
            await outputs.get()
            loop.abort("long")
            return await loop.call(engine.stats)
        finally:
            loop.stop()

    stats = asyncio.run(run())
    assert stats["running"] == 0 and stats["waiting"] == 0 and stats["free_blocks"] == stats["num_blocks"]


def test_a_crashed_engine_fails_its_requests_and_later_calls(engine, monkeypatch):
    async def run():
        loop = EngineLoop(engine, lambda outputs: None)
        outputs, _ = await _add(loop, engine, "doomed", None, 50)
        await outputs.get()
        monkeypatch.setattr(engine, "step", lambda: 1 / 0)
        failed = await asyncio.wait_for(_finish(outputs), timeout=10)
        assert isinstance(failed, EngineLoopDead) and not loop.alive
        with pytest.raises(EngineLoopDead):
            await loop.call(engine.stats)

    asyncio.run(run())
    monkeypatch.undo()
    engine.abort("doomed")


def test_text_stream_holds_back_incomplete_characters_and_stop_prefixes():
    stream = TextStream(stop=["END"])
    pieces = [stream.push("ab", False), stream.push("abc\ufffd", False), stream.push("abc€ E", False), stream.push("abc€ ", True)]
    assert "".join(pieces) == "abc€ "
    assert "\ufffd" not in "".join(pieces)


def test_text_stream_keeps_going_when_decoding_rewrites_earlier_text():
    stream = TextStream(stop=[])
    pieces = [stream.push("Hello ", False), stream.push("Hello.", False), stream.push("Hello. Bye", True)]
    assert pieces == ["Hello ", "", " Bye"], "the end is never dropped"
