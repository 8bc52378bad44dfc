"""Ray nodes started by hand with `ray start` on 127.0.0.1, as an operator starts a cluster: a head node and more
nodes joining it, each with its own free ports and custom resources. Every process of a node carries a marker
in its environment, so that a node is stopped (or killed, as a lost machine) by finding exactly its processes:
never `ray stop`, which would stop every Ray cluster of the machine."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import psutil

from tests.serve_fixtures import REPO, free_port

MARKER = "FAIR_LORA_TEST_NODE"


@dataclass
class RayNode:
    name: str
    marker: str
    port: int | None = None  # the GCS port, on the head node
    env: dict = field(default_factory=dict)

    def processes(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            try:
                if process.environ().get(MARKER) == self.marker:
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def kill(self) -> int:
        """SIGKILL every process of the node (a machine lost at once); returns how many there were."""
        processes = self.processes()
        for process in processes:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=10)
        return len(processes)


def _ports() -> list[str]:
    lo = free_port()
    return [
        f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--min-worker-port={lo}", f"--max-worker-port={lo + 200}",
    ]


def start_node(name: str, resources: dict[str, float], num_cpus: float, head: RayNode | None = None) -> RayNode:
    """`ray start --head` (head is None) or `ray start --address` of head; blocks until the node has joined."""
    node = RayNode(name, f"{name}-{uuid.uuid4().hex[:8]}")
    # A temp directory of the cluster's own: `ray start --head` writes the address of "the current cluster" in
    # it, where a plain ray.init() of anyone else on the machine would otherwise find it and connect.
    tmp = head.env["RAY_TMPDIR"] if head else tempfile.mkdtemp(prefix="fl_ray_", dir="/tmp")
    env = {**os.environ, MARKER: node.marker, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO), "RAY_TMPDIR": tmp}
    args = [sys.executable, "-m", "ray.scripts.scripts", "start", "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}", "--disable-usage-stats", *_ports()]
    if head is None:
        node.port = free_port()
        args += ["--head", f"--port={node.port}", "--include-dashboard=false", f"--ray-client-server-port={free_port()}"]
    else:
        args += [f"--address=127.0.0.1:{head.port}"]
    subprocess.run(args, env=env, check=True, capture_output=True, timeout=120)
    node.env = env
    return node


def driver(head: RayNode, code: str, timeout: float = 180) -> str:
    """Run `code` in a Python process connected to the cluster (ray.init(address)); returns its stdout."""
    prelude = f"import ray; ray.init(address='127.0.0.1:{head.port}', log_to_driver=False)\n"
    env = {k: v for k, v in head.env.items() if k != MARKER}  # a driver is not part of the head node
    done = subprocess.run([sys.executable, "-c", prelude + code], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    if done.returncode:
        raise AssertionError(f"driver failed:\n{done.stdout}\n{done.stderr[-4000:]}")
    return done.stdout


def wait_gone(node: RayNode, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while node.processes() and time.monotonic() < deadline:
        time.sleep(0.2)
