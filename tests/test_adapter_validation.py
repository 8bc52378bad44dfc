"""A bad adapter is refused with a named error that says what is wrong; nothing else in the engine changes,
and requests already in flight finish with the outputs they would have had."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fair_lora import (
    AdapterFormatError,
    AdapterNameError,
    AdapterPathError,
    RequestError,
    SamplingParams,
    UnknownAdapterError,
)
from tests.engine_helpers import assert_matches_oracle, greedy, make_engine, request_mix

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


def copy_adapter(demo, root: Path, name: str, source: str = "adapter-0") -> Path:
    target = root / name
    shutil.copytree(demo.adapters[source], target)
    return target


def truncated(d: Path) -> None:
    data = (d / WEIGHTS).read_bytes()
    (d / WEIGHTS).write_bytes(data[: len(data) // 2])


def corrupt(d: Path) -> None:
    (d / WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64))


def edit_weights(d: Path, change) -> None:
    tensors = load_file(d / WEIGHTS)
    change(tensors)
    save_file(tensors, d / WEIGHTS)


def wrong_shape(d: Path) -> None:
    def change(t):
        key = next(k for k in t if "lora_B" in k)
        t[key] = torch.randn(t[key].shape[0] + 1, t[key].shape[1])

    edit_weights(d, change)


def unknown_target(d: Path) -> None:
    def change(t):
        t["base_model.model.lm_head.lora_A.weight"] = torch.randn(4, 64)
        t["base_model.model.lm_head.lora_B.weight"] = torch.randn(259, 4)

    edit_weights(d, change)


def rank_above_max(d: Path) -> None:
    config = json.loads((d / CONFIG).read_text())
    config["r"] = 128
    (d / CONFIG).write_text(json.dumps(config))


def pickle_only(d: Path) -> None:
    (d / WEIGHTS).unlink()
    (d / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle; it must never be unpickled


def not_finite(d: Path) -> None:
    edit_weights(d, lambda t: t[next(iter(t))].fill_(float("nan")))


def bad_config_json(d: Path) -> None:
    (d / CONFIG).write_text("{ r: 8,")


def huge_alpha(d: Path) -> None:
    config = json.loads((d / CONFIG).read_text())
    config["lora_alpha"] = 1e38
    (d / CONFIG).write_text(json.dumps(config))


def duplicate_key(d: Path) -> None:
    def change(t):
        key = next(k for k in t if "lora_A" in k)
        t[key.replace("lora_A.weight", "lora_A.default.weight")] = t[key].clone()

    edit_weights(d, change)


def overflows_engine_dtype(d: Path) -> None:
    def change(t):
        key = next(iter(t))
        t[key] = t[key].double() * 1e300  # finite in float64, infinite in the engine's float32

    edit_weights(d, change)


BAD_ADAPTERS = {
    "truncated-safetensors": (truncated, AdapterFormatError, "safetensors"),
    "corrupt-safetensors": (corrupt, AdapterFormatError, "safetensors"),
    "wrong-shapes": (wrong_shape, AdapterFormatError, "must be"),
    "rank-above-max": (rank_above_max, AdapterFormatError, "max_lora_rank"),
    "unknown-target": (unknown_target, AdapterFormatError, "unknown module"),
    "pickle-only": (pickle_only, AdapterFormatError, "pickle"),
    "nan-weights": (not_finite, AdapterFormatError, "NaN"),
    "bad-config-json": (bad_config_json, AdapterFormatError, "JSON"),
    "huge-alpha": (huge_alpha, AdapterFormatError, "scaling"),
    "duplicate-key": (duplicate_key, AdapterFormatError, "two lora_A"),
    "float64-overflow": (overflows_engine_dtype, AdapterFormatError, "infinity"),
}


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory, demo) -> Path:
    root = tmp_path_factory.mktemp("bad-adapters")
    for name, (damage, _, _) in BAD_ADAPTERS.items():
        damage(copy_adapter(demo, root, name))
    return root


@pytest.fixture()
def engine(demo, bad_root):
    return make_engine(demo, adapter_roots=[str(Path(demo.adapters["adapter-0"]).parent), str(bad_root)])


def engine_state(engine) -> tuple:
    weights = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    return engine.adapters(), dict(engine.pool.slot_of), engine.hot_adapter, weights


def assert_unchanged(engine, before) -> None:
    adapters, slots, hot, weights = engine_state(engine)
    assert (adapters, slots, hot) == before[:3]
    assert all(torch.equal(weights[k], before[3][k]) for k in weights)


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_bad_adapter_is_refused_and_changes_nothing(engine, bad_root, demo, oracle, case):
    _, error, message = BAD_ADAPTERS[case]
    engine.set_hot_adapter("adapter-1")
    ids = [engine.add_request(p, a, greedy(6)) for p, a in request_mix(demo)]
    engine.step()  # requests are in flight when the bad adapter arrives
    before = engine_state(engine)
    with pytest.raises(error, match=message) as info:
        engine.load_adapter(case, bad_root / case)
    assert str(bad_root / case) in str(info.value), "the error names the file or directory at fault"
    assert_unchanged(engine, before)
    final = {}
    while engine.has_unfinished():
        final.update((o.request_id, o) for o in engine.step() if o.finished)
    assert_matches_oracle(engine, oracle, [final[i] for i in ids], 6)


def test_path_outside_adapter_roots_is_refused(engine, demo, tmp_path):
    outside = copy_adapter(demo, tmp_path, "fine-but-elsewhere")
    before = engine_state(engine)
    with pytest.raises(AdapterPathError, match="outside the configured adapter roots"):
        engine.load_adapter("elsewhere", outside)
    with pytest.raises(AdapterPathError):
        engine.load_adapter("sneaky", Path(demo.adapters["adapter-0"]).parent / ".." / ".." / tmp_path.name)
    assert_unchanged(engine, before)


@pytest.mark.parametrize(
    "path",
    ["{root}/a\0b", "{root}/" + "x" * 300, "{root}/" + "x" * 300 + "/adapter", "~no-such-user-fair-lora/adapter"],
    ids=["nul-byte", "overlong-name", "overlong-parent", "unknown-home"],
)
def test_unusable_paths_are_refused_as_path_errors(engine, bad_root, path):
    before = engine_state(engine)
    with pytest.raises(AdapterPathError, match="not a usable path"):
        engine.load_adapter("unusable", path.format(root=bad_root))
    assert_unchanged(engine, before)


def test_files_past_the_systems_path_limit_are_a_format_error(engine, bad_root):
    """The directory is fine, but its files' paths pass PATH_MAX: an OSError inside, a named error outside."""
    deep, length = bad_root / "deep", 4090  # under PATH_MAX (4096 with its NUL); "/adapter_config.json" is not
    while len(str(deep)) + 101 < length:
        deep /= "d" * 100
    deep /= "e" * (length - len(str(deep)) - 1)
    deep.mkdir(parents=True)
    before = engine_state(engine)
    with pytest.raises(AdapterFormatError, match="cannot read the adapter's files"):
        engine.load_adapter("deep", deep)
    assert_unchanged(engine, before)


def test_symlinked_weights_escaping_the_roots_are_refused(engine, demo, bad_root, tmp_path):
    outside = copy_adapter(demo, tmp_path, "outside", source="adapter-2")
    inside = copy_adapter(demo, bad_root, "symlinked", source="adapter-2")
    (inside / WEIGHTS).unlink()
    (inside / WEIGHTS).symlink_to(outside / WEIGHTS)
    before = engine_state(engine)
    with pytest.raises(AdapterPathError, match="outside the configured adapter roots"):
        engine.load_adapter("symlinked", inside)
    assert_unchanged(engine, before)


def test_adapter_named_like_the_base_model_is_refused(engine, demo):
    with pytest.raises(AdapterNameError, match="base model"):
        engine.load_adapter(engine.base_model_name, demo.adapters["adapter-0"])


@pytest.mark.parametrize("name", ["", "a/b", "..", "../up", "a\\b", "x" * 200, " spaced"])
def test_bad_adapter_names_are_refused(engine, demo, name):
    before = engine_state(engine)
    with pytest.raises(AdapterNameError, match="name"):
        engine.load_adapter(name, demo.adapters["adapter-0"])
    assert_unchanged(engine, before)


def test_good_adapter_loads_at_run_time_and_unloads(engine, demo, bad_root, oracle):
    path = copy_adapter(demo, bad_root, "runtime-copy", source="adapter-4")
    engine.load_adapter("runtime", path)
    out = engine.generate(["Hello, world!"], ["runtime"], greedy(5))[0]
    assert out.token_ids == oracle.greedy(out.prompt_token_ids, "adapter-4", 5)[0]
    engine.unload_adapter("runtime")
    with pytest.raises(UnknownAdapterError):
        engine.add_request("hi", "runtime")


def test_bad_requests_are_refused_with_named_errors(engine):
    with pytest.raises(UnknownAdapterError, match="not loaded"):
        engine.add_request("hi", "no-such-adapter")
    with pytest.raises(RequestError, match="empty"):
        engine.add_request("", None)
    with pytest.raises(RequestError, match="exceeds the context"):
        engine.add_request("hi", None, SamplingParams(max_tokens=10_000))
    with pytest.raises(RequestError, match="top_p"):
        SamplingParams(top_p=0.0)
    assert not engine.has_unfinished()
