"""benchmarks/harness/launch_server.py's Real setting with no --model: SmolLM2-135M-Instruct under its own name, each shipped
adapter served under several names, and the CPU's context set by --max-model-len."""
from benchmarks.harness.launch_server import build_app_args, default_real_assets, parse_args
from benchmarks.common.synthetic_assets import plan_assets
from deployments.app_builder import parse_args as validate

pytest_plugins = ["tests.real_model_fixtures"]


def test_real_setting_serves_smollm2_under_its_name_with_its_adapters(real):
    opts = parse_args(["--model-setting", "Real", "--fair_strategy", "--num-adapter", "6", "--device", "cpu",
                       "--num-token", "16384", "--max-model-len", "2048"])
    default_real_assets(opts)
    assets = plan_assets(opts.model_setting, opts.num_adapter, None, opts.model, opts.adapter_dir)
    app = validate(build_app_args(opts, assets))
    assert app.base_model_name == "SmolLM2-135M-Instruct" and app.max_model_len == 2048
    assert sorted(app.adapters) == sorted(f"{n}-{i}" for n in real.adapters for i in range(2))
    assert all(app.adapters[f"{n}-0"] == str(path) for n, path in real.adapters.items())
