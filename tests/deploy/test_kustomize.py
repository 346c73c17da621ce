"""The plain manifests (deploy/): a kustomize base with an example workload, and a component
that adds the sidecar to any Deployment. Built by `kubectl kustomize`, checked like the chart."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.deploy.manifests import (
    DEPLOY,
    NATIVE_FLOOR,
    check_config,
    containers,
    kubectl,
    kustomize,
    pod_specs,
    render,
    restricted_problems,
    schema_problems,
)


def test_the_base_and_the_example_overlay_build_and_kubernetes_accepts_them():
    for folder in (DEPLOY / "base", DEPLOY / "examples" / "existing-app"):
        docs = kustomize(folder)
        assert schema_problems(docs, NATIVE_FLOOR) == [], folder
        specs = list(pod_specs(docs))
        assert specs, folder
        for name, spec in specs:
            assert restricted_problems(spec) == [], name


def test_the_base_has_the_example_with_a_native_sidecar_config_account_and_policy():
    docs = kustomize(DEPLOY / "base")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "NetworkPolicy", "ServiceAccount"]
    ((_, spec),) = pod_specs(docs)
    (sidecar,) = spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    # the generated ConfigMap's hashed name is what the pod mounts: pods roll on a change
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and "sidecar.yaml" in d["data"])
    volume = next(v for v in spec["volumes"] if v["name"] == "secrets-sidecar-config")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_map["metadata"]["name"].startswith("secrets-sidecar-config-")
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    labels = spec_labels(docs)
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def spec_labels(docs: list[dict]) -> dict[str, str]:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def test_the_configs_pass_the_sidecars_own_check(tmp_path: Path):
    for config in (
        DEPLOY / "base" / "sidecar.yaml",
        DEPLOY / "examples" / "existing-app" / "sidecar.yaml",
    ):
        checked = check_config(config.read_text(), tmp_path)
        assert checked.returncode == 0, (config, checked.stderr)


def test_the_component_patches_an_existing_deployment_and_leaves_its_container_alone():
    docs = kustomize(DEPLOY / "examples" / "existing-app")
    ((_, spec),) = pod_specs(docs)
    by_name = containers(spec)
    assert set(by_name) == {"web", "secrets-sidecar"}
    web = by_name["web"]
    assert web["image"] == "registry.example.com/web:2.3.1"
    assert web["volumeMounts"] == [
        {"name": "secrets-sidecar-token", "mountPath": "/run/secrets-sidecar", "readOnly": True}
    ]
    assert spec["serviceAccountName"] == "web"
    assert spec["securityContext"]["fsGroup"] == 10001


def test_a_deployment_without_a_volume_mounts_list_is_refused_with_the_documented_message(
    tmp_path: Path,
):
    copy_of = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy_of)
    web = copy_of / "examples" / "existing-app" / "web.yaml"
    web.write_text(web.read_text().replace("          volumeMounts: []", ""))
    built = subprocess.run(
        [kubectl(), "kustomize", str(web.parent)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode != 0
    assert "volumeMounts/-" in built.stderr and "missing" in built.stderr
    documented = (DEPLOY / "components" / "secrets-sidecar" / "kustomization.yaml").read_text()
    assert "doc is missing path" in documented and "volumeMounts: []" in documented


def test_the_component_and_the_chart_run_the_same_sidecar_container():
    """Two ways to deploy, one sidecar: probes, ports, security context, resources and mounts
    are the same in the component and in the chart's default rendering."""
    ((_, from_kustomize),) = pod_specs(kustomize(DEPLOY / "base"))
    ((_, from_helm),) = pod_specs(render())
    one, other = from_kustomize["initContainers"][0], from_helm["initContainers"][0]
    one.pop("imagePullPolicy", None), other.pop("imagePullPolicy", None)
    assert one == other
    assert from_kustomize["securityContext"] == from_helm["securityContext"]

    def volumes(spec: dict) -> dict:
        found = {v["name"]: v for v in spec["volumes"] if v["name"].startswith("secrets-sidecar")}
        found["secrets-sidecar-config"] = {"configMap": "(generated name)"}
        found["secrets-sidecar-snapshot-key"]["secret"]["secretName"] = "(per install)"
        return found

    assert volumes(from_kustomize) == volumes(from_helm)
    helm_config = yaml.safe_load(
        next(d for d in render() if d["kind"] == "ConfigMap")["data"]["sidecar.yaml"]
    )
    kustomize_config = yaml.safe_load((DEPLOY / "base" / "sidecar.yaml").read_text())
    assert kustomize_config == helm_config


def test_the_fault_proxy_for_staging_builds_is_restricted_and_runs_the_real_command():
    from sidecar.cli import _parser

    docs = kustomize(DEPLOY / "faultproxy")
    assert sorted(d["kind"] for d in docs) == ["Deployment", "Service"]
    assert schema_problems(docs, (1, 25)) == []
    ((_, spec),) = pod_specs(docs)
    assert restricted_problems(spec) == []
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1  # every sidecar behind it sees the same fault
    (proxy,) = spec["containers"]
    args = _parser().parse_args([*proxy["command"][1:], *proxy["args"]])
    assert proxy["command"] == ["sidecar"] and args.faultproxy_command == "run"
    assert args.allow_remote and args.listen == "0.0.0.0:8200"
    assert args.control.startswith("127.0.0.1:")  # changed with kubectl exec, never remotely
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["selector"].items() <= spec_labels(docs).items()
    assert service["spec"]["ports"][0]["targetPort"] == proxy["ports"][0]["name"]
