"""Ray Serve's throughput-optimised mode, and where the ingress then listens itself.

Serve's default path (HTTP proxy → ingress → worker over Ray actor calls, user code on a separate thread) spends
more CPU per request than the engine leaves free, so the service falls well behind the engine on the same
requests. RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (replica-to-replica calls over gRPC, user code and router on the
replica's main loop, GC frozen after start) removes much of that cost through the same proxy port, and sending
straight to the ingress replica's own HTTP server (Serve's "direct ingress", part of that mode) skips the proxy's
share as well; the measurements are in docs/benchmarks.md. Serve reads these variables when its controller and replicas start, so they must be in
the environment of whatever starts Ray: the launchers here call `use_throughput_mode()` before ray.init, and
`serve run` needs `RAY_SERVE_THROUGHPUT_OPTIMIZED=1` in its shell (README).
"""
import os

THROUGHPUT_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # In this mode an ingress replica keeps its own HTTP server up for 30 s after it is told to stop, so that an
    # external load balancer can take it out of rotation first. The clusters the launchers and tests start are
    # their own, on 127.0.0.1, with no balancer in front: there that drain only makes every shutdown 30 s
    # longer (and outlasts serve.shutdown's own 30 s timeout). A deployment behind a balancer keeps Serve's default.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
}
DIRECT_PORTS = (30000, 31000)  # Serve's default range for direct-ingress HTTP servers (RAY_SERVE_DIRECT_INGRESS_*)


def use_throughput_mode() -> None:
    """Before ray.init of a cluster of our own: Serve's throughput-optimised mode, unless the environment already
    says otherwise."""
    for name, value in THROUGHPUT_ENV.items():
        os.environ.setdefault(name, value)


def direct_ingress_urls(app: str, host: str = "127.0.0.1") -> list[str]:
    """The URLs on which this node's ingress replicas of `app` serve HTTP themselves (direct ingress), found
    from their listening sockets; empty when the mode is off."""
    import psutil

    title = f"ServeReplica:{app}:Ingress"
    pids = {p.pid for p in psutil.process_iter(["cmdline"]) if title in " ".join(p.info["cmdline"] or [])}
    lo, hi = (int(os.environ.get(f"RAY_SERVE_DIRECT_INGRESS_{k}_HTTP_PORT", d)) for k, d in zip(("MIN", "MAX"),
                                                                                               DIRECT_PORTS))
    ports = sorted({c.laddr.port for c in psutil.net_connections("tcp") if c.pid in pids
                    and c.status == psutil.CONN_LISTEN and lo <= c.laddr.port <= hi})
    return [f"http://{host}:{port}" for port in ports]
