"""An exception inside a step fails only the requests that cause it: they finish with "error", every other
request of the batch goes on to the oracle's output, the KV blocks come back, and the engine keeps serving.
Only an engine that fails every request alone, or a poisoned CUDA context, stops."""
import pytest

from fair_lora import SamplingParams
from fair_lora.engine.step_isolation import FATAL_FAILURES
from tests.engine_helpers import assert_matches_oracle, greedy, make_engine, request_mix

MAX_TOKENS = 6


@pytest.fixture(scope="module")
def engine(demo):
    return make_engine(demo)


def _run(engine, requests: list[tuple[str, str | None, SamplingParams]]) -> dict:
    ids = [engine.add_request(prompt, adapter, params) for prompt, adapter, params in requests]
    final = {}
    while engine.has_unfinished():
        final.update((o.request_id, o) for o in engine.step() if o.finished)
    return {i: final[i] for i in ids}


def _assert_idle(engine) -> None:
    stats = engine.stats()
    assert stats["running"] == stats["waiting"] == 0 and stats["free_blocks"] == stats["num_blocks"]
    assert not engine.pool.pins, "a failed request kept its adapter slot pinned"


def test_a_request_that_breaks_the_sampler_fails_alone(engine, oracle, demo):
    bad = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, top_k=5)
    bad.top_k = 2**63  # past validation, as a bug or a hostile number would be: torch cannot hold it
    good = [(prompt, adapter, greedy(MAX_TOKENS)) for prompt, adapter in request_mix(demo)]
    requests = good[:3] + [("poison", "adapter-1", bad)] + good[3:]
    outputs = list(_run(engine, requests).values())
    failed = outputs.pop(3)
    assert failed.finish_reason == "error" and "Overflow" in failed.error
    assert all(o.finish_reason == "length" and o.error is None for o in outputs), [(o.finish_reason, o.error) for o in outputs]
    assert_matches_oracle(engine, oracle, outputs, MAX_TOKENS)
    _assert_idle(engine)


def test_a_request_that_breaks_the_forward_fails_alone_in_prefill_and_decode(engine, oracle, demo, monkeypatch):
    run = engine.runner.run
    poisoned: set[str] = set()

    def failing_run(scheduled, *args):
        if any(s.seq.request_id in poisoned for s in scheduled):
            raise RuntimeError("injected failure")
        return run(scheduled, *args)

    monkeypatch.setattr(engine.runner, "run", failing_run)
    requests = [(prompt, adapter, greedy(MAX_TOKENS)) for prompt, adapter in request_mix(demo)]
    ids = [engine.add_request(p, a, sp) for p, a, sp in requests]
    poisoned.add(ids[0])  # fails in its prefill
    outputs = {}
    for step in range(100):
        if step == 2:
            poisoned.add(ids[-1])  # fails in a decode step, two tokens in
        outputs.update((o.request_id, o) for o in engine.step() if o.finished)
        if not engine.has_unfinished():
            break
    for request_id in (ids[0], ids[-1]):
        assert outputs[request_id].finish_reason == "error" and "injected failure" in outputs[request_id].error
    assert len(outputs[ids[0]].token_ids) == 0 and len(outputs[ids[-1]].token_ids) == 2
    assert_matches_oracle(engine, oracle, [outputs[i] for i in ids[1:-1]], MAX_TOKENS)
    _assert_idle(engine)


def test_an_engine_that_fails_every_request_stops(engine, demo, monkeypatch):
    def broken(*args):
        raise RuntimeError("broken engine")

    monkeypatch.setattr(engine.runner, "run", broken)
    for i in range(FATAL_FAILURES + 2):
        engine.add_request(f"doomed {i}", None, greedy(MAX_TOKENS))
    with pytest.raises(RuntimeError, match="broken engine"):
        for _ in range(10):
            engine.step()
    monkeypatch.undo()
    for request_id in list(engine.sequences):
        engine.abort(request_id)
    _assert_idle(engine)


def test_a_cuda_error_is_never_isolated(engine, monkeypatch):
    def poisoned(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(engine.runner, "run", poisoned)
    request_id = engine.add_request("one", None, greedy(MAX_TOKENS))
    with pytest.raises(RuntimeError, match="CUDA error"):
        engine.step()
    monkeypatch.undo()
    engine.abort(request_id)
    _assert_idle(engine)
