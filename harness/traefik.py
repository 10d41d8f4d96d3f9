"""A real Gateway API data plane: Traefik v3 (its kubernetesGateway provider) as a process on this machine.

The harness's own router (harness.router) reads the HTTPRoute and splits the load itself. This is the software users
run instead: Traefik watches GatewayClasses, Gateways, HTTPRoutes, Services and EndpointSlices through a kubeconfig,
and forwards each request to one ready endpoint address of the Service a weighted backendRef names. The binary is
built from Go modules by cluster/build-traefik.sh (version in cluster/versions.env); a missing binary is an error.

How it is wired:

- One static config file (written here): an entrypoint `web` on 127.0.0.1:<port> for the traffic and one,
  `traefik`, on 127.0.0.1:<api port> for `/ping` and the read-only API. Nothing listens beyond loopback, and the
  version check and the anonymous usage report (Traefik's only calls out) are off.
- Traefik matches a Gateway listener to an entrypoint by port, so the Gateway's listener port is the entrypoint's
  port (`gateway(ns, port=traefik.port)`), and the GatewayClass names Traefik's controller.
- It reads the cluster with the admin kubeconfig (`KUBECONFIG`; the in-cluster variables are removed so that it
  never tries a ServiceAccount), optionally only some namespaces.
- It loads no route at all unless the BackendTLSPolicy CRD is served (it watches it): cluster/crds/gateway-api/
  holds Gateway API v1.4.0's standard CRDs, which have it.
- `providersThrottleDuration` is Traefik's default (2 s) unless `throttle` is given: after applying one change
  Traefik waits that long before it applies the next. A change after a quiet spell is applied within milliseconds
  of the write; one that follows another closely waits out the rest of the 2 s (tests/e2e/test_traefik.py
  measures both).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from harness.services import free_port, stop_process, wait_http

REPO = Path(__file__).resolve().parent.parent
GW_API = "gateway.networking.k8s.io/v1"
CONTROLLER = "traefik.io/gateway-controller"
GATEWAY_CLASS = "saferollout-traefik"
GATEWAY = "traefik-gateway"
ENTRYPOINT = "web"


def traefik_version() -> str:
    """TRAEFIK_VERSION from cluster/versions.env, the one place it is pinned."""
    for line in (REPO / "cluster" / "versions.env").read_text().splitlines():
        if line.startswith("TRAEFIK_VERSION="):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("cluster/versions.env pins no TRAEFIK_VERSION")


def default_binary() -> Path:
    """Where cluster/build-traefik.sh puts the binary ($SR_TRAEFIK_BIN moves it there and here alike)."""
    explicit = os.environ.get("SAFEROLLOUT_TRAEFIK")
    if explicit:
        return Path(explicit)
    d = os.environ.get("SR_TRAEFIK_BIN")
    return (Path(d) if d else REPO / ".cache" / "bin" / f"traefik-{traefik_version()}") / "traefik"


def gateway_class(name: str = GATEWAY_CLASS) -> dict[str, Any]:
    """The GatewayClass that Traefik's Gateway provider takes (by its controllerName)."""
    return {"apiVersion": GW_API, "kind": "GatewayClass", "metadata": {"name": name},
            "spec": {"controllerName": CONTROLLER}}


def gateway(namespace: str, port: int, name: str = GATEWAY, gateway_class_name: str = GATEWAY_CLASS) -> dict[str, Any]:
    """A Gateway with one HTTP listener on `port`, which must be a Traefik entrypoint's port; routes of its namespace."""
    return {"apiVersion": GW_API, "kind": "Gateway", "metadata": {"name": name, "namespace": namespace},
            "spec": {"gatewayClassName": gateway_class_name,
                     "listeners": [{"name": "http", "port": port, "protocol": "HTTP",
                                    "allowedRoutes": {"namespaces": {"from": "Same"}}}]}}


class Traefik:
    """One Traefik process: traffic on 127.0.0.1:`port`, ping and API on 127.0.0.1:`api_port`, log in `root`."""

    def __init__(self, root: Path, kubeconfig: Path, binary: Path | None = None, port: int | None = None,
                 api_port: int | None = None, namespaces: Sequence[str] = (), throttle: str | None = None,
                 log_level: str = "INFO") -> None:
        self.root = root
        self.kubeconfig = kubeconfig
        self.binary = binary or default_binary()
        self.port = port or free_port()
        self.api_port = api_port or free_port()
        self.namespaces = list(namespaces)
        self.throttle = throttle
        self.log_level = log_level
        self.config = root / "traefik.yml"
        self.log = root / "traefik.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where the traffic goes in (the Gateway's listener)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def static_config(self) -> dict[str, Any]:
        provider: dict[str, Any] = {}
        if self.namespaces:
            provider["namespaces"] = self.namespaces
        providers: dict[str, Any] = {"kubernetesGateway": provider}
        if self.throttle is not None:
            providers["providersThrottleDuration"] = self.throttle
        return {
            # Traefik's only calls out of the machine: off. Nothing else here reaches beyond loopback and the cluster.
            "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
            "entryPoints": {ENTRYPOINT: {"address": f"127.0.0.1:{self.port}"},
                            "traefik": {"address": f"127.0.0.1:{self.api_port}"}},
            "ping": {"entryPoint": "traefik"},
            "api": {"insecure": True, "dashboard": False},
            "providers": providers,
            "log": {"level": self.log_level, "noColor": True},
        }

    def start(self, timeout: float = 30) -> None:
        """Write the static config and start; returns once /ping answers. RuntimeError when there is no binary."""
        if self.running:
            return
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise RuntimeError(f"no traefik binary at {self.binary}: build it with `bash cluster/build-traefik.sh`")
        if not self.kubeconfig.is_file():
            raise RuntimeError(f"no kubeconfig at {self.kubeconfig}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(self.static_config(), sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
        env["KUBECONFIG"] = str(self.kubeconfig)
        with self.log.open("ab") as logf:
            self._proc = subprocess.Popen([str(self.binary), f"--configFile={self.config}"], env=env, stdout=logf,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                          cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"traefik exited with code {self._proc.returncode}; see {self.log}")
            if wait_http(f"{self.api_url}/ping", 0.5):
                return
        self.stop()
        raise RuntimeError(f"traefik did not answer /ping in {timeout:g}s; see {self.log}")

    def stop(self, timeout: float = 10) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout=timeout)

    def api(self, path: str) -> Any:
        """GET on Traefik's read-only API (`/api/http/routers`, `/api/http/services`, ...), decoded."""
        with urllib.request.urlopen(f"{self.api_url}{path}", timeout=5) as r:
            return json.load(r)

    def services(self) -> list[dict[str, Any]]:
        """The HTTP services Traefik has loaded (a weighted one per HTTPRoute rule, a load balancer per backend)."""
        out = self.api("/api/http/services")
        return out if isinstance(out, list) else []

    def routers(self) -> list[dict[str, Any]]:
        """The HTTP routers its Gateway provider made (one per match of an HTTPRoute rule)."""
        out = self.api("/api/http/routers")
        return [r for r in out if r.get("provider") == "kubernetesgateway"] if isinstance(out, list) else []

    def middlewares(self) -> list[dict[str, Any]]:
        """The HTTP middlewares its Gateway provider made (one per filter it applies)."""
        out = self.api("/api/http/middlewares")
        return [m for m in out if m.get("provider") == "kubernetesgateway"] if isinstance(out, list) else []

    def wait_routers(self, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        """Wait until the Gateway provider has loaded at least `count` HTTP routers; RuntimeError on timeout."""
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                routers = self.api("/api/http/routers")
            except (OSError, urllib.error.URLError, ValueError):
                routers = []
            found = [r for r in routers if isinstance(r, dict) and r.get("provider") == "kubernetesgateway"]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise RuntimeError(f"traefik loaded {len(found)} Gateway API routers, not {count}, in {timeout:g}s; see {self.log}")
