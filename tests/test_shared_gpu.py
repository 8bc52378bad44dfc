"""Two workers on one GPU, as the multi-GPU benchmark deploys them: launch_server's --gpus-per-worker gives each
worker a fractional num_gpus (the app then needs each worker's KV cache size), and multi_gpu's --workers-per-gpu
passes it on. No GPU needed: only the arguments."""
import pytest

from benchmarks.common.synthetic_assets import plan_assets


def test_launch_server_puts_two_workers_on_a_gpu_with_their_own_kv_cache(tmp_path):
    from benchmarks.harness.launch_server import build_app_args, parse_args
    from deployments.app_builder import AppArgsError, parse_args as validate

    flags = ["--model-setting", "S1", "--dummy", "--device", "cuda", "--num-replicas", "2", "--gpus-per-worker", "0.5",
             "--num-adapter", "4", "--cache-dir", str(tmp_path)]
    app = validate(build_app_args(parse_args([*flags, "--num-token", "12000"]), plan_assets("S1", 4, tmp_path)))
    assert (app.workers.num_replicas, app.workers.num_gpus, app.num_kv_tokens) == (2, 0.5, 12000)
    with pytest.raises(AppArgsError, match="num_kv_tokens"):
        validate(build_app_args(parse_args(flags), plan_assets("S1", 4, tmp_path)))


def test_multi_gpu_workers_per_gpu_passes_the_share_to_launch_server(tmp_path):
    from benchmarks.multi_gpu.bench import parse_args

    opts = parse_args(["--out", str(tmp_path), "--gpus", "1", "2", "--workers-per-gpu", "2",
                       "--server-arg=--num-token=12000"])
    assert opts.server_args[-3:] == ["--gpus-per-worker", "0.5", "--num-token=12000"]
