"""The serving engine without Ray: the engine steps in its own process and the asyncio side detokenizes.
Concurrent requests share steps and equal LLMEngine.generate(); stop strings end a request as in-process; text
deltas never retract and add up to the text; an abort frees its blocks; a dead engine process fails its
requests at once instead of hanging them."""
import asyncio
import threading

import pytest

from fair_lora import EngineConfig, LLMEngine, SamplingParams, UnknownAdapterError
from fair_lora.serving.async_engine import AsyncLLMEngine
from fair_lora.serving.core_client import EngineDeadError
from fair_lora.engine.detokenizer import OutputText

ADAPTERS = [None, "adapter-0", "adapter-1", "adapter-2"]


def _config(demo) -> EngineConfig:
    return EngineConfig(model=str(demo.model_dir), adapters={n: str(p) for n, p in demo.adapters.items()}, auto_hot=False)


@pytest.fixture(scope="module")
def offline(demo):
    return LLMEngine(_config(demo))


class Served:
    """One serving engine for the module, on an event loop of its own thread (an engine process takes seconds to
    start); `run(fn)` runs `fn(engine)` on that loop and returns its result."""

    def __init__(self, demo) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.steps: list[int] = []
        self.queues: list[tuple[int, int]] = []  # (waiting, running) of each report
        self.engine = self._wait(AsyncLLMEngine.start(_config(demo), on_step=self._on_step, torch_threads=1))

    def _on_step(self, report) -> None:
        self.steps.append(report.stats.num_seqs)
        self.queues.append((report.waiting, report.running))

    def _wait(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=120)

    def run(self, fn):
        return self._wait(fn(self.engine))

    def close(self) -> None:
        self._wait(self.engine.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


@pytest.fixture(scope="module")
def served(demo):
    served = Served(demo)
    yield served
    served.close()


def test_concurrent_requests_share_steps_and_equal_generate(served, offline):
    params = SamplingParams(max_tokens=12, ignore_eos=True, logprobs=True)
    want = offline.generate(["served"] * 4, ADAPTERS, params)

    async def collect(stream):
        return [d async for d in stream.deltas()]

    async def requests(engine):
        streams = [await engine.add("served", adapter, params) for adapter in ADAPTERS]
        return streams, await asyncio.gather(*(collect(s) for s in streams))

    served.steps.clear()
    streams, deltas = served.run(requests)
    for stream, got, expected in zip(streams, deltas, want):
        assert stream.token_ids == expected.token_ids and stream.text == expected.text
        assert [t for d in got for t in d.token_ids] == expected.token_ids
        assert "".join(d.text for d in got) == expected.text, "deltas must add up to the text"
        assert max(abs(a - b) for a, b in zip(stream.logprobs, expected.logprobs)) < 1e-5
        assert got[-1].finished and got[-1].finish_reason == "length" and not any(d.finished for d in got[:-1])
    assert max(served.steps) > 1


def test_a_request_without_deltas_wakes_its_consumer_once_with_the_whole_output(served, offline):
    params = SamplingParams(max_tokens=12, ignore_eos=True, logprobs=True)
    want = offline.generate(["whole"] * 2, ADAPTERS[:2], params)

    async def collect(stream):
        return [d async for d in stream.deltas()]

    async def requests(engine):
        streams = [await engine.add("whole", adapter, params, deltas=False) for adapter in ADAPTERS[:2]]
        return streams, await asyncio.gather(*(collect(s) for s in streams))

    streams, deltas = served.run(requests)
    for stream, got, expected in zip(streams, deltas, want):
        assert len(got) == 1 and got[0].finished and got[0].finish_reason == "length", "one wake-up, at the end"
        assert stream.token_ids == expected.token_ids and stream.text == expected.text
        assert max(abs(a - b) for a, b in zip(stream.logprobs, expected.logprobs)) < 1e-5
        assert stream.first_token_at is not None


def test_streams_share_the_message_budget_and_still_add_up_to_the_whole_output(served, offline):
    """4 streams on 2 messages/s: each is woken every 2 s, far slower than the demo's steps, so after its first
    tokens the rest comes grouped; the first delta is never held and the finish goes out at once."""
    params = SamplingParams(max_tokens=24, ignore_eos=True, logprobs=True)
    want = offline.generate(["budget"] * 4, ADAPTERS, params)

    async def collect(stream):
        return [d async for d in stream.deltas()]

    async def requests(engine):
        engine.stream_messages_per_s = 2.0
        try:
            streams = [await engine.add("budget", adapter, params) for adapter in ADAPTERS]
            return streams, await asyncio.gather(*(collect(s) for s in streams))
        finally:
            engine.stream_messages_per_s = None

    streams, deltas = served.run(requests)
    for stream, got, expected in zip(streams, deltas, want):
        assert [t for d in got for t in d.token_ids] == expected.token_ids and stream.text == expected.text
        assert "".join(d.text for d in got) == expected.text
        assert [lp for d in got for lp in d.logprobs] == pytest.approx(expected.logprobs, abs=1e-5)
        assert len(got) <= 3, f"{len(got)} deltas for 24 tokens on a 2 s interval"
        assert got[-1].finished and got[-1].finish_reason == "length"
    assert not served.engine.holding and not served.engine.streaming


def test_the_budget_interval_follows_the_number_of_streams_and_holds_nothing_past_it(monkeypatch):
    from fair_lora.serving import async_engine
    from fair_lora.serving.async_engine import RequestDelta, RequestStream

    clock = [100.0]
    monkeypatch.setattr(async_engine.time, "monotonic", lambda: clock[0])

    async def scenario():
        engine = AsyncLLMEngine(stream_messages_per_s=10.0)
        streams = [RequestStream(f"r{i}", [1], False, OutputText([])) for i in range(5)]
        for s in streams:
            engine.streams[s.request_id] = s
            engine.streaming.add(s.request_id)
        step = lambda stream_ids, finished=(): engine._hand_out(  # noqa: E731
            [(streams[i], RequestDelta([i], "x", None, i in finished, "length" if i in finished else None))
             for i in stream_ids], report=None)
        assert engine._wake_interval_s() == pytest.approx(0.5)  # 5 streams / 10 messages per second
        step(range(5))  # first tokens: at once
        assert [s.queue.qsize() for s in streams] == [1] * 5
        clock[0] += 0.1
        step(range(5), finished={4})  # 0.1 s later: held, except the finish
        assert [s.queue.qsize() for s in streams] == [1, 1, 1, 1, 2] and set(engine.holding) == {"r0", "r1", "r2", "r3"}
        clock[0] += 0.45
        step([0])  # 0.55 s after their last hand-over: r0 with its new tokens, r1-r3 without (e.g. preempted)
        assert [s.queue.qsize() for s in streams[:4]] == [2, 2, 2, 2] and not engine.holding
        assert engine._wake_interval_s() == pytest.approx(0.4)  # r4 finished: 4 streams left
        merged = [streams[0].queue.get_nowait() for _ in range(2)][1]
        assert merged.token_ids == [0, 0] and merged.text == "xx" and not merged.finished

    asyncio.run(scenario())


def test_stop_strings_end_requests_as_the_in_process_engine_does(served, offline):
    free = offline.generate(["stop here"], [None], SamplingParams(max_tokens=40, ignore_eos=True))[0].text
    stop = free[len(free) // 2 : len(free) // 2 + 2]  # two characters from the middle of the output
    params = SamplingParams(max_tokens=40, ignore_eos=True, stop=[stop])
    want = offline.generate(["stop here"], [None], params)[0]

    async def request(engine):
        stream = await engine.add("stop here", None, params)
        texts = [d.text async for d in stream.deltas()]
        return stream, texts, await engine.call("stats")

    stream, texts, stats = served.run(request)
    assert want.finish_reason == stream.finish_reason == "stop"
    assert stream.text == want.text == "".join(texts) and stop not in stream.text
    assert stats["running"] == 0, "the engine process went on generating after the stop string"


def test_refused_requests_raise_before_any_output(served):
    async def request(engine):
        with pytest.raises(UnknownAdapterError):
            await engine.add("x", "no-such-adapter", SamplingParams())
        return await engine.call("stats")

    stats = served.run(request)
    assert stats["waiting"] == stats["running"] == 0


def test_abort_frees_every_block(served):
    async def request(engine):
        stream = await engine.add("long", "adapter-3", SamplingParams(max_tokens=400, ignore_eos=True))
        async for _ in stream.deltas():
            break
        engine.abort(stream.request_id)
        for _ in range(100):
            stats = await engine.call("stats")
            if stats["running"] == 0:
                return stats
            await asyncio.sleep(0.05)
        return stats

    stats = served.run(request)
    assert stats["running"] == stats["waiting"] == 0 and stats["free_blocks"] == stats["num_blocks"]


def test_aborts_that_empty_the_queue_are_reported_without_another_request(served):
    """The router reads a worker's queue from these reports: a stale one would keep it off an idle worker."""

    async def abort_all(engine):
        streams = [await engine.add(f"cut {i}", "adapter-1", SamplingParams(max_tokens=400, ignore_eos=True))
                   for i in range(3)]
        for stream in streams:
            async for _ in stream.deltas():
                break
        for stream in streams:
            engine.abort(stream.request_id)
        for _ in range(40):
            await asyncio.sleep(0.05)
            if served.queues[-1] == (0, 0):
                return True
        return False

    assert served.run(abort_all), f"last reports: {served.queues[-5:]}"


def test_a_dead_engine_process_fails_its_requests_and_later_calls(demo):
    async def request(engine):
        stream = await engine.add("doomed", None, SamplingParams(max_tokens=400, ignore_eos=True))
        deltas = stream.deltas()
        await deltas.__anext__()
        engine.client.process.kill()
        with pytest.raises(EngineDeadError):
            async for _ in deltas:
                pass
        assert not engine.alive
        with pytest.raises(EngineDeadError):
            await engine.call("stats")
        with pytest.raises(EngineDeadError):
            await engine.add("later", None, SamplingParams())

    asyncio.run(asyncio.wait_for(_started(demo, request), timeout=120))


async def _started(demo, body):
    engine = await AsyncLLMEngine.start(_config(demo), torch_threads=1)
    try:
        await body(engine)
    finally:
        await engine.close()


def test_text_deltas_hold_back_incomplete_characters_and_stop_prefixes():
    output = OutputText(stops=["END"])
    pieces = []
    for text, finished in [("ab", False), ("abc\ufffd", False), ("abc€ E", False), ("abc€ ", True)]:
        output.text = text
        pieces.append(output.take_delta(finished))
    assert "".join(pieces) == "abc€ " and "\ufffd" not in "".join(pieces)


def test_text_deltas_go_on_when_decoding_rewrites_earlier_text():
    output = OutputText()
    pieces = []
    for text, finished in [("Hello ", False), ("Hello.", False), ("Hello. Bye", True)]:
        output.text = text
        pieces.append(output.take_delta(finished))
    assert pieces == ["Hello ", "", " Bye"], "the end is never dropped"
