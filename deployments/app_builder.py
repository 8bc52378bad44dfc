"""build_app: the Serve application from serve_config.yaml's `args` (import_path: deployments:build_app)."""
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from deployments.app_args import AppArgs, ReplicaArgs
from deployments.hot_adapter_router import HotAdapterRouter
from deployments.ingress import Ingress
from deployments.lora_worker import LoRAWorker
from deployments.popularity_tracker import PopularityTracker


class AppArgsError(ValueError):
    """serve_config.yaml's args do not validate; the message lists each wrong field."""


def parse_args(args: dict | AppArgs | None) -> AppArgs:
    if isinstance(args, AppArgs):
        return args
    try:
        return AppArgs.model_validate(args or {})
    except ValidationError as error:
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(args)'}: {e['msg']}" for e in error.errors()]
        raise AppArgsError("invalid fair_lora app args in serve_config.yaml:\n" + "\n".join(lines)) from None


def _actor_options(replicas: ReplicaArgs) -> dict:
    return {"num_cpus": replicas.num_cpus, "num_gpus": replicas.num_gpus, "resources": dict(replicas.resources)}


def build_app(args: dict | AppArgs | None = None) -> Application:
    app_args = parse_args(args)
    routing = app_args.routing
    router = RequestRouterConfig(
        request_router_class=HotAdapterRouter,
        request_router_kwargs={"imbalance_threshold": routing.imbalance_threshold or app_args.max_num_seqs},
        request_routing_stats_period_s=routing.stats_period_s,
        request_routing_stats_timeout_s=max(routing.stats_period_s, 1.0),
    ) if routing.router == "hot_adapter" else RequestRouterConfig()  # Serve's default router
    logging = {"enable_access_log": app_args.access_log}  # Serve's own line per request: off unless asked
    # The app's own deployment, so the app owns it: removed with the app, replaced (from these settings) if it dies.
    tracker = serve.deployment(PopularityTracker).options(
        num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000, health_check_period_s=2.0,
        logging_config=logging,
    ).bind(app_args.popularity.config())
    workers = serve.deployment(LoRAWorker).options(
        num_replicas=app_args.workers.num_replicas,
        ray_actor_options=_actor_options(app_args.workers),
        max_ongoing_requests=app_args.worker_max_ongoing,
        max_queued_requests=app_args.worker_max_queued,
        request_router_config=router,
        health_check_period_s=1.0,  # a dead engine process fails the next check: Serve hears of it within 1 s
        health_check_timeout_s=30.0,
        graceful_shutdown_timeout_s=5.0,
        logging_config=logging,
    )
    ingress = serve.deployment(Ingress).options(
        num_replicas=app_args.ingress.num_replicas,
        ray_actor_options=_actor_options(app_args.ingress),
        max_ongoing_requests=app_args.ingress_max_ongoing,
        max_queued_requests=app_args.ingress_max_queued,  # bounds the proxy's queue in front of the ingress
        logging_config=logging,
    )
    return ingress.bind(app_args, workers.bind(app_args, tracker), tracker)
