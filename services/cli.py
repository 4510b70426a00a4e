"""The `switchyard` command.

    switchyard up [--engine vllm|sim] [--model PATH_OR_ID] [--host 127.0.0.1] [--http-port 8000]
                  [--api-key KEY]
    switchyard keys create|list|revoke|top-up ...   (the router's API keys and credits)

`up` makes sure the API key exists in the router's database (the embedded SQLite file by default,
the one `switchyard keys` uses) with ample credits, runs engine, router and edge as three processes on
loopback with the embedded default configuration (deploy/local/models.yaml), waits until the edge's
/health answers 200, prints the base URL and the key, and stops all three (edge first, engine last)
on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL_ID = "switchyard/tiny-llama"
SIM_MODEL_ID = "switchyard/sim"
# Seconds a service gets to drain after SIGTERM before it is killed.
STOP_GRACE = 15.0


def cache_dir() -> Path:
    return Path(os.environ.get("SWITCHYARD_CACHE_DIR", REPO_ROOT / ".cache")).resolve()


def has_gpu() -> bool:
    """A CUDA device is visible. Checked without importing torch, which takes seconds."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


@dataclass
class Service:
    name: str
    module: str
    env: dict[str, str]
    # How `up` knows the service is ready: a gRPC address whose health says SERVING, or an HTTP base.
    grpc_address: str | None = None
    http_base: str | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def ready(self) -> bool:
        if self.grpc_address:
            return grpc_serving(self.grpc_address)
        return http_healthy(self.http_base or "")

    def start(self, log_dir: Path | None) -> None:
        stdout = None
        if log_dir is not None:
            stdout = open(log_dir / f"{self.name}.log", "ab")  # lives as long as the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env={**os.environ, **self.env},
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout else None,
            # Own process group: Ctrl-C reaches only `switchyard up`, which stops the children in order.
            start_new_session=True,
        )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def engine_env(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The engine's settings for `up`, and the model id it serves."""
    env = {"SWITCHYARD_ENGINE_HOST": args.host, "SWITCHYARD_ENGINE_PORT": str(args.engine_port)}
    if args.engine == "sim":
        model_id = args.served_model_name or SIM_MODEL_ID
        env |= {"SWITCHYARD_ENGINE_BACKEND": "sim", "SWITCHYARD_ENGINE_SERVED_MODEL_NAME": model_id}
        return model_id, env

    env["SWITCHYARD_ENGINE_BACKEND"] = "vllm"
    if args.model:
        model_id = args.served_model_name or args.model.rstrip("/")
        if "/" not in model_id or Path(model_id).exists():
            model_id = f"local/{Path(model_id).name}"
        env["SWITCHYARD_ENGINE_VLLM__MODEL"] = args.model
    else:
        # No model: the engine serves the tiny local model, built once under the cache folder,
        # with its own settings (hermes tool parser, a small KV cache; vllm_config.py).
        from services.engine.tiny_model import ensure_tiny_model

        print("building the tiny local model (once; cached under .cache/models) ...", flush=True)
        ensure_tiny_model()
        model_id = args.served_model_name or TINY_MODEL_ID
    env["SWITCHYARD_ENGINE_SERVED_MODEL_NAME"] = model_id
    if args.kv_cache_mib is not None:
        env["SWITCHYARD_ENGINE_VLLM__KV_CACHE_MEMORY_BYTES"] = str(args.kv_cache_mib * 1024 * 1024)
    if not has_gpu():
        # vLLM's CPU build: no CUDA graphs, no torch.compile (minutes of start-up for no gain here).
        env |= {"SWITCHYARD_ENGINE_VLLM__ENFORCE_EAGER": "true", "TORCHDYNAMO_DISABLE": "1"}
    return model_id, env


def offline_env() -> dict[str, str]:
    """No hub at run time and every cache inside the project's cache folder."""
    root = cache_dir()
    return {
        "SWITCHYARD_CACHE_DIR": str(root),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "HF_HOME": os.environ.get("HF_HOME", str(root / "hf")),
        "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(root / "vllm")),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


def build_services(args: argparse.Namespace, database_url: str) -> list[Service]:
    """The three processes; the router keeps its keys, credits and request log at `database_url`."""
    from services.router.accounting.settings import DATABASE_URL_ENV

    model_id, engine = engine_env(args)
    common = offline_env()
    engine_address = f"{args.host}:{args.engine_port}"
    router_address = f"{args.host}:{args.router_port}"
    router = {
        "SWITCHYARD_ROUTER_HOST": args.host,
        "SWITCHYARD_ROUTER_PORT": str(args.router_port),
        "SWITCHYARD_LOCAL_MODEL": model_id,
        "SWITCHYARD_LOCAL_ENGINE": engine_address,
        DATABASE_URL_ENV: database_url,
    }
    if args.reveal_model_names:
        router["SWITCHYARD_ROUTER_REVEAL_MODEL_NAMES"] = "true"
    edge = {
        "SWITCHYARD_EDGE_HOST": args.host,
        "SWITCHYARD_EDGE_PORT": str(args.http_port),
        "SWITCHYARD_EDGE_ROUTER_ADDRESS": router_address,
    }
    for name in ("ENGINE", "ROUTER", "EDGE"):
        common[f"SWITCHYARD_{name}_LOG_LEVEL"] = args.log_level
    return [
        Service("engine", "services.engine", common | engine, grpc_address=engine_address),
        Service("router", "services.router", common | router, grpc_address=router_address),
        Service("edge", "services.edge", common | edge, http_base=f"http://{args.host}:{args.http_port}"),
    ]


def http_healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def grpc_serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def engine_context_window(address: str) -> int:
    """The served model's max_model_len, so the registry advertises what the engine really takes."""
    import grpc

    from switchyard.engine.v1 import engine_service_pb2, engine_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = engine_service_pb2_grpc.EngineServiceStub(channel)
        return stub.GetModelInfo(engine_service_pb2.GetModelInfoRequest(), timeout=10).max_model_len


def start_in_order(
    services: list[Service], log_dir: Path | None, timeout: float, stopping: list[bool]
) -> bool:
    """Starts each service once the one it calls is ready (engine, router, edge), so the router's
    first health watch already finds a serving engine and the edge a serving router."""
    deadline = time.monotonic() + timeout
    engine, router = services[0], services[1]
    for service in services:
        if service is router and engine.grpc_address:
            router.env["SWITCHYARD_LOCAL_CONTEXT_WINDOW"] = str(engine_context_window(engine.grpc_address))
        service.start(log_dir)
        while not service.ready():
            if stopping or time.monotonic() > deadline:
                return False
            if service.exited() is not None:
                print(f"{service.name} exited with code {service.exited()}", file=sys.stderr)
                return False
            time.sleep(0.25)
    return True


def cmd_up(args: argparse.Namespace) -> int:
    from services.router.accounting.cli import ensure_api_key
    from services.router.accounting.settings import default_database_url

    api_key = args.api_key or os.environ.get("SWITCHYARD_API_KEY") or f"sy-{secrets.token_urlsafe(24)}"
    database_url = args.database or default_database_url()
    # Before the router starts, so that the key works on the first request (and the router, which
    # migrates the same database, finds it up to date).
    ensure_api_key(api_key, database_url=database_url)
    services = build_services(args, database_url)
    log_dir = Path(args.log_dir).resolve() if args.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    stopping: list[bool] = []

    def request_stop(signum, frame):
        stopping.append(True)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    base = f"http://{args.host}:{args.http_port}"
    code = 0
    try:
        if not start_in_order(services, log_dir, args.startup_timeout, stopping):
            if not stopping:
                print(
                    f"Switchyard did not become healthy within {args.startup_timeout:.0f}s", file=sys.stderr
                )
                code = 1
            return code
        print(f"Switchyard is up: {base}/v1  (API key: {api_key})", flush=True)
        print(f"  keys, credits and the request log: {database_url}  (switchyard keys --help)", flush=True)
        print(f"  try: curl {base}/v1/models -H 'Authorization: Bearer {api_key}'", flush=True)
        while not stopping:
            for service in services:
                if service.exited() is not None:
                    print(f"{service.name} exited with code {service.exited()}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        for service in reversed(services):
            service.stop()
        print("Switchyard stopped.", flush=True)


def add_up_parser(subparsers) -> None:
    from services.router.accounting.settings import database_url_from

    up = subparsers.add_parser("up", help="run engine, router and edge on this machine")
    up.add_argument("--engine", choices=["vllm", "sim"], default="vllm",
                    help="vllm (default: the tiny local model on CPU, or --model) or the simulator")
    up.add_argument("--model", help="model path (or id in the local HF cache) for the vllm engine")
    up.add_argument("--served-model-name", help="the model id clients see (default: derived)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--http-port", type=int, default=8000)
    up.add_argument("--router-port", type=int, default=50051)
    up.add_argument("--engine-port", type=int, default=50061)
    up.add_argument("--api-key", help="the API key clients use (default: $SWITCHYARD_API_KEY or a new one); "
                    "made an admin key with ample credits in the database if it is not there yet")
    up.add_argument("--database", metavar="URL_OR_PATH", type=database_url_from,
                    help="the router's database for keys, credits and the request log (default: "
                    "$SWITCHYARD_ROUTER_ACCOUNTING__DATABASE_URL or ./var/switchyard.db, "
                    "as `switchyard keys`)")
    up.add_argument("--reveal-model-names", action="store_true",
                    help="name the real model in responses instead of 'redacted'")
    up.add_argument("--kv-cache-mib", type=int, help="KV cache size of the vllm engine (default: vLLM's)")
    up.add_argument("--startup-timeout", type=float, default=600.0)
    up.add_argument("--log-level", default="INFO")
    up.add_argument("--log-dir", help="write each service's log to DIR/<service>.log instead of the terminal")
    up.set_defaults(func=cmd_up)


def main(argv: list[str] | None = None) -> int:
    from services.router.accounting.cli import register as register_keys

    parser = argparse.ArgumentParser(prog="switchyard", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_up_parser(subparsers)
    register_keys(subparsers)
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
