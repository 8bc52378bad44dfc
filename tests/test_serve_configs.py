"""serve_config.yaml and the configs/ presets validate, and bad app args are refused with every wrong field named."""
from pathlib import Path

import pytest
import yaml

from deployments import AppArgsError, build_app
from deployments.app_builder import parse_args

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "serve_config.yaml", *sorted((REPO / "configs").glob("*.yaml"))]


def app_of(path: Path) -> tuple[dict, dict]:
    config = yaml.safe_load(path.read_text())
    (app,) = config["applications"]
    return config, app


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_builds_the_app_on_localhost(path):
    config, app = app_of(path)
    assert app["import_path"] == "deployments:build_app"
    assert config["http_options"]["host"] == "127.0.0.1"
    build_app(app["args"])


def test_serve_config_is_the_cpu_smollm2_preset_with_two_fractional_workers_on_port_8000():
    config, app = app_of(REPO / "serve_config.yaml")
    assert app["args"] == app_of(REPO / "configs" / "cpu_smollm2.yaml")[1]["args"]
    args = parse_args(app["args"])
    assert config["http_options"]["port"] == 8000
    assert args.model == "SmolLM2-135M-Instruct" and args.device == "cpu" and args.max_model_len
    assert parse_args(app_of(REPO / "configs" / "cpu_demo.yaml")[1]["args"]).model is None
    assert args.workers.num_replicas == 2 and 0 < args.workers.num_cpus < 1 and 0 < args.ingress.num_cpus < 1


def test_gpu_preset_gives_each_worker_one_gpu_and_real_directories():
    args = parse_args(app_of(REPO / "configs" / "gpu_llama2_7b.yaml")[1]["args"])
    assert args.device == "cuda" and args.workers.num_gpus == 1 and args.workers.num_replicas > 1
    assert args.model and args.adapters and args.adapter_roots


def test_bad_args_name_every_wrong_field():
    bad = {"max_num_seqs": 0, "popularity": {"enter_share": 0.2, "exit_share": 0.3}, "workers": {"num_cpus": -1}, "typo": 1}
    with pytest.raises(AppArgsError) as caught:
        parse_args(bad)
    message = str(caught.value)
    for field in ("max_num_seqs", "popularity", "workers.num_cpus", "typo"):
        assert field in message, message


def test_fair_weights_still_reads_as_client_weights_old_name():
    with pytest.warns(DeprecationWarning, match="client_weights"):
        args = parse_args({"scheduling_policy": "vtc", "fair_weights": {"adapter-1": 2.0}})
    assert args.client_weights == {"adapter-1": 2.0}
    assert args.engine_config().client_weights == {"adapter-1": 2.0}
    with pytest.raises(AppArgsError, match="client_weights only"):
        parse_args({"fair_weights": {"a": 1.0}, "client_weights": {"a": 2.0}})


def test_queued_request_limits_are_bounded_and_validated():
    args = parse_args({})
    assert args.ingress_max_queued == 1024 and args.worker_max_queued == args.max_waiting
    assert parse_args({"ingress": {"max_queued_requests": 50}}).ingress_max_queued == 50
    with pytest.raises(AppArgsError, match="ingress.max_queued_requests"):
        parse_args({"ingress": {"max_queued_requests": 0}})
    app = build_app({})
    assert app._bound_deployment.max_queued_requests == 1024  # the ingress deployment: the proxy queues for it


def test_cuda_without_gpus_is_refused():
    with pytest.raises(AppArgsError, match="num_gpus"):
        parse_args({"model": "/m", "device": "cuda"})


def test_two_workers_may_share_a_gpu_each_with_an_explicit_kv_cache():
    shared = {"model": "/m", "device": "cuda", "workers": {"num_replicas": 2, "num_gpus": 0.5}}
    with pytest.raises(AppArgsError, match="num_kv_tokens"):
        parse_args(shared)
    args = parse_args({**shared, "num_kv_tokens": 20000})
    assert args.workers.num_gpus == 0.5
    options = build_app(args)._bound_deployment.init_args[1]._bound_deployment.ray_actor_options
    assert options["num_gpus"] == 0.5


def test_replicas_take_custom_resources_to_pin_them_to_nodes():
    app = build_app({"workers": {"num_replicas": 2, "resources": {"fair_lora_worker": 1}}})
    workers = app._bound_deployment.init_args[1]._bound_deployment
    assert workers.ray_actor_options["resources"] == {"fair_lora_worker": 1}
