"""The Helm chart (charts/secrets-sidecar), rendered by Helm's own SDK, checked by Kubernetes'
own schemas, the Prometheus Operator's models, the restricted Pod Security profile and the
sidecar's own `check-config`, standalone and as a dependency of an application's chart."""

from __future__ import annotations

import base64
import copy
import hashlib
import shutil
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from sidecar import __version__
from sidecar.ops.snapshot_key import load_key
from tests.deploy.manifests import (
    CHART,
    CLASSIC_FLOOR,
    NATIVE_FLOOR,
    ROOT,
    Doc,
    check_config,
    containers,
    kubernetes_versions,
    pod_specs,
    render,
    restricted_problems,
    schema_problems,
    sidecar_config,
)

STORE = [{"ipBlock": {"cidr": "10.20.0.5/32"}}]
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "classic": {"mode": "classic"},
    "approle": {"auth": {"method": "approle", "approle": {"roleId": "r-1", "secretName": "ar"}}},
    "approle-role-id-from-secret": {
        "auth": {"method": "approle", "approle": {"secretName": "ar", "roleIdKey": "role_id"}}
    },
    "token": {"auth": {"method": "token", "token": {"secretName": "store-token"}}},
    "snapshot-off": {"snapshot": {"enabled": False}},
    "snapshot-key-from-own-secret": {"snapshot": {"key": {"existingSecret": "my-key"}}},
    "podmonitor": {"podMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "prometheusrule": {"prometheusRule": {"enabled": True, "labels": {"release": "prom"}}},
    "grafana-dashboard": {"grafanaDashboard": {"enabled": True}},
    "networkpolicy": {"networkPolicy": {"enabled": True, "store": {"to": STORE}}},
    "audit-file": {"audit": {"to": "file"}},
    "audit-none": {"audit": {"to": "none"}},
    "store-ca": {"storeCA": {"secretName": "openbao-ca"}},
    "pdb": {"example": {"podDisruptionBudget": {"enabled": True}}},
    "everything": {
        "mode": "classic",
        "auth": {"method": "approle", "approle": {"roleId": "r-1", "secretName": "ar"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "networkPolicy": {"enabled": True, "store": {"to": STORE}},
        "audit": {"to": "file"},
        "storeCA": {"configMapName": "openbao-ca"},
        "example": {"podDisruptionBudget": {"enabled": True}},
        "image": {"digest": "sha256:" + "ab" * 32},
    },
}


def _floor(values: dict[str, Any]) -> tuple[int, int]:
    return CLASSIC_FLOOR if values.get("mode") == "classic" else NATIVE_FLOOR


def _the_pod(docs: list[Doc]) -> Doc:
    (spec,) = [spec for _, spec in pod_specs(docs)]
    return spec


def _kinds(docs: list[Doc]) -> list[str]:
    return sorted(d["kind"] for d in docs)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_lints_and_renders_manifests_that_kubernetes_accepts(variant: str):
    values = VARIANTS[variant]
    report = helm_python.lint(str(CHART), values, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    docs = render(values)
    assert schema_problems(docs, _floor(values)) == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_passes_the_restricted_pod_security_profile(variant: str):
    for name, spec in pod_specs(render(VARIANTS[variant])):
        assert restricted_problems(spec) == [], name


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variants_config_passes_the_sidecars_own_check(variant: str, tmp_path: Path):
    checked = check_config(sidecar_config(render(VARIANTS[variant])), tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "configuration is valid" in checked.stdout


def test_the_checks_themselves_catch_what_they_are_for():
    """A misspelt field, a native sidecar on a cluster without them, a root container, a
    misspelt PodMonitor field: each is reported."""
    docs = render(VARIANTS["podmonitor"])
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    assert any("restartPolicyy" in p for p in schema_problems([misspelt], NATIVE_FLOOR))
    assert any("restartPolicy" in p for p in schema_problems([deployment], (1, 27)))
    monitor = copy.deepcopy(next(d for d in docs if d["kind"] == "PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "30s"
    assert schema_problems([monitor], NATIVE_FLOOR) == [
        f"PodMonitor/{monitor['metadata']['name']}: field .spec.podMetricsEndpoints[0].intervall "
        "is not in the schema"
    ]
    spec = copy.deepcopy(deployment["spec"]["template"]["spec"])
    sidecar = spec["initContainers"][0]["securityContext"]
    sidecar["capabilities"] = {"add": ["NET_ADMIN"]}
    sidecar["allowPrivilegeEscalation"] = True
    spec["securityContext"].pop("runAsNonRoot")
    spec["containers"][0]["securityContext"].pop("runAsNonRoot")  # now neither pod nor container
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = restricted_problems(spec)
    assert "container secrets-sidecar does not drop ALL capabilities" in problems
    assert "container secrets-sidecar adds capabilities ['NET_ADMIN']" in problems
    assert "container secrets-sidecar: allowPrivilegeEscalation is not false" in problems
    assert "container app: runAsNonRoot is not true" in problems
    assert "volume host is of type ['hostPath']" in problems
    assert kubernetes_versions(NATIVE_FLOOR)[0] == "1.29.0"


def test_native_mode_starts_the_sidecar_first_and_gates_the_app_on_readyz():
    spec = _the_pod(render())
    (sidecar,) = spec["initContainers"]
    assert sidecar["name"] == "secrets-sidecar"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["ports"] == [{"name": "metrics", "containerPort": 9102, "protocol": "TCP"}]
    assert [c["name"] for c in spec["containers"]] == ["app"]
    assert "lifecycle" not in sidecar


def test_classic_mode_runs_a_second_container_that_waits_before_it_stops():
    spec = _the_pod(render(VARIANTS["classic"]))
    assert "initContainers" not in spec
    sidecar = containers(spec)["secrets-sidecar"]
    assert "restartPolicy" not in sidecar
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert [c["name"] for c in spec["containers"]] == ["app", "secrets-sidecar"]
    # the grace period covers the delay and the sidecar's own shutdown_timeout
    assert spec["terminationGracePeriodSeconds"] >= 5 + 10


def test_the_caller_token_is_shared_read_only_and_the_admin_token_and_keys_are_not():
    spec = _the_pod(render(VARIANTS["everything"] | {"mode": "native"}))
    by_name = containers(spec)
    mounts = {name: {m["name"]: m for m in c["volumeMounts"]} for name, c in by_name.items()}
    assert mounts["app"] == {
        "secrets-sidecar-token": {
            "name": "secrets-sidecar-token",
            "mountPath": "/run/secrets-sidecar",
            "readOnly": True,
        }
    }
    sidecar = mounts["secrets-sidecar"]
    assert not sidecar["secrets-sidecar-token"].get("readOnly")  # it writes the token
    for secret in ("secrets-sidecar-admin-token", "secrets-sidecar-snapshot-key"):
        assert secret in sidecar
    volumes = {v["name"]: v for v in spec["volumes"]}
    for tokens in ("secrets-sidecar-token", "secrets-sidecar-admin-token"):
        assert volumes[tokens]["emptyDir"]["medium"] == "Memory"
    assert spec["securityContext"]["fsGroup"] == 10001  # the app reads the 0640 token through it
    # no uid at pod level: an application's own containers keep theirs
    assert not {"runAsUser", "runAsGroup"} & set(spec["securityContext"])
    assert by_name["secrets-sidecar"]["securityContext"]["runAsUser"] == 10001
    assert by_name["secrets-sidecar"]["securityContext"]["readOnlyRootFilesystem"] is True


def test_kubernetes_auth_uses_a_projected_token_for_the_configured_audience():
    docs = render({"auth": {"kubernetes": {"audience": "vault", "expirationSeconds": 900}}})
    spec = _the_pod(docs)
    (source,) = next(v for v in spec["volumes"] if v["name"] == "secrets-sidecar-sa-token")[
        "projected"
    ]["sources"]
    assert source["serviceAccountToken"] == {
        "path": "token",
        "audience": "vault",
        "expirationSeconds": 900,
    }
    assert spec["automountServiceAccountToken"] is False
    config = yaml.safe_load(sidecar_config(docs))
    assert config["backend"]["auth"] == {
        "method": "kubernetes",
        "role": "secrets-sidecar-example",
        "mount": "kubernetes",
        "jwt_file": "/var/run/secrets/secrets-sidecar/serviceaccount/token",
    }


def test_every_file_the_config_names_is_on_a_volume_the_sidecar_mounts():
    for variant in ("defaults", "approle-role-id-from-secret", "token", "audit-file", "store-ca"):
        docs = render(VARIANTS[variant])
        config = yaml.safe_load(sidecar_config(docs))
        auth, tls = config["backend"]["auth"], config["backend"].get("tls", {})
        files = [
            config["caller_token_file"],
            config["admin_token_file"],
            config["snapshot"]["path"],
            config["snapshot"].get("key_file"),
            config.get("audit_log"),
            *(auth.get(k) for k in ("jwt_file", "token_file", "role_id_file", "secret_id_file")),
            tls.get("ca_cert"),
        ]
        mounts = [
            m["mountPath"] for m in containers(_the_pod(docs))["secrets-sidecar"]["volumeMounts"]
        ]
        for path in filter(None, files):
            assert any(path.startswith(m + "/") for m in mounts), f"{variant}: {path}"


def test_the_config_checksum_rolls_pods_on_a_config_change_only():
    def checksum(values: dict[str, Any]) -> str:
        annotations = next(d for d in render(values) if d["kind"] == "Deployment")["spec"][
            "template"
        ]["metadata"]["annotations"]
        return str(annotations["checksum/secrets-sidecar-config"])

    base = checksum({})
    assert checksum({"example": {"replicas": 3}}) == base
    assert checksum({"config": {"backend": {"timeout": "5s"}}}) != base
    docs = render()
    expected = hashlib.sha256(sidecar_config(docs).rstrip("\n").encode()).hexdigest()
    assert base == expected


def test_snapshot_off_drops_the_key_and_the_made_key_is_a_valid_one_kept_on_uninstall(
    tmp_path: Path,
):
    off = render(VARIANTS["snapshot-off"])
    assert "Secret" not in _kinds(off)
    assert "key_file" not in yaml.safe_load(sidecar_config(off))["snapshot"]
    (secret,) = [d for d in render() if d["kind"] == "Secret"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key_file = tmp_path / "key"
    key_file.write_bytes(base64.b64decode(secret["data"]["key"]))  # what the pod's file holds
    assert len(load_key(key_file)) == 32  # randBytes gives base64 text: a form the sidecar reads
    assert "Secret" not in _kinds(render(VARIANTS["snapshot-key-from-own-secret"]))


def test_optional_objects_appear_only_when_asked_for():
    assert _kinds(render()) == ["ConfigMap", "Deployment", "Secret", "ServiceAccount"]
    everything = _kinds(render(VARIANTS["everything"]))
    assert {"PodMonitor", "PrometheusRule", "NetworkPolicy", "PodDisruptionBudget"} <= set(
        everything
    )


def test_the_network_policy_allows_the_store_dns_and_metrics_from_monitoring_only():
    docs = render(VARIANTS["networkpolicy"])
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pod_labels = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["metadata"][
        "labels"
    ]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 9102, "protocol": "TCP"}]  # a number: see the template
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    store, dns = policy["spec"]["egress"]
    assert store == {"to": STORE, "ports": [{"port": 8200, "protocol": "TCP"}]}
    assert {p["port"] for p in dns["ports"]} == {53}


def test_the_pod_monitor_scrapes_the_named_metrics_port_of_pods_with_the_sidecar():
    docs = render(VARIANTS["podmonitor"])
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    pod_labels = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]
    assert monitor["metadata"]["labels"]["release"] == "prom"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "sidecar"}, "at '/mode': value must be one of 'native', 'classic'"),
        (
            {"auth": {"kubernetes": {"expirationSeconds": 60}}},
            "at '/auth/kubernetes/expirationSeconds': minimum: got 60, want 600",
        ),
        ({"snapshott": {"enabled": True}}, "additional properties 'snapshott' not allowed"),
        (
            {"config": {"classes": {"x": {"owner": "a"}}}},
            "at '/config/classes/x': missing properties 'business_function'",
        ),
        (
            {"networkPolicy": {"enabled": True}},
            "at '/networkPolicy/store/to': minItems: got 0, want 1",
        ),
        ({"auth": {"method": "approle"}}, "at '/auth/approle/secretName': minLength: got 0"),
        (
            {"example": {"enabled": False}},
            "at '/config/classes': minProperties: got 0, want 1",
        ),
    ],
)
def test_the_values_schema_rejects_bad_values_with_a_clear_message(
    values: dict[str, Any], message: str
):
    with pytest.raises(helm_python.HelmValuesError) as refused:
        render(values)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"listen": "0.0.0.0:8100"}, "config.listen is set by the chart"),
        ({"backend": {"auth": {"method": "token"}}}, "config.backend.auth is set by the chart"),
        ({"snapshot": {"path": "/x"}}, "config.snapshot is set by the chart"),
    ],
)
def test_keys_the_chart_owns_are_refused_in_config_with_a_reason(
    config: dict[str, Any], message: str
):
    with pytest.raises(helm_python.HelmError) as refused:
        render({"config": config})
    assert message in str(refused.value)


def test_the_image_tag_is_the_sidecars_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == values["image"]["tag"] == __version__
    image = containers(_the_pod(render()))["secrets-sidecar"]["image"]
    assert image == f"{values['image']['repository']}:{__version__}"
    digest = "sha256:" + "ab" * 32
    pinned = containers(_the_pod(render(VARIANTS["everything"])))["secrets-sidecar"]["image"]
    assert pinned == f"{values['image']['repository']}@{digest}"


def test_the_example_app_files_are_one_script():
    """The chart and the kustomize base run the same example app."""
    chart_copy = (CHART / "files" / "example-app.py").read_text()
    assert (ROOT / "deploy" / "base" / "example-app.py").read_text() == chart_copy


# -- as a dependency of an application's chart (examples/helm-app) -------------------------------


@pytest.fixture(scope="module")
def app_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/helm-app with its dependency built (`helm dependency build`) in a copy."""
    copy_of = tmp_path_factory.mktemp("helm-app") / "my-app"
    shutil.copytree(ROOT / "examples" / "helm-app", copy_of)
    chart_yaml = copy_of / "Chart.yaml"
    chart_yaml.write_text(
        chart_yaml.read_text().replace("file://../../charts/secrets-sidecar", f"file://{CHART}")
    )
    helm_python.dependency_build(str(copy_of))
    return copy_of


@pytest.mark.parametrize("mode", ["native", "classic"])
def test_an_application_chart_adds_the_sidecar_with_the_named_templates(
    app_chart: Path, mode: str, tmp_path: Path
):
    report = helm_python.lint(str(app_chart), {"sidecar": {"mode": mode}}, with_subcharts=True)
    assert report["errors"] == []
    docs = render({"sidecar": {"mode": mode}}, chart=app_chart, name="shop")
    assert _kinds(docs) == ["ConfigMap", "Deployment", "Secret", "ServiceAccount"]  # no example
    assert schema_problems(docs, CLASSIC_FLOOR if mode == "classic" else NATIVE_FLOOR) == []
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    assert restricted_problems(spec) == []
    by_name = containers(spec)
    assert set(by_name) == {"my-app", "secrets-sidecar"}
    app_mounts = by_name["my-app"]["volumeMounts"]
    assert {
        "name": "secrets-sidecar-token",
        "mountPath": "/run/secrets-sidecar",
        "readOnly": True,
    } in app_mounts
    # the ConfigMap the pod mounts is the one the dependency renders, and the checksum is of it
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    volume = next(v for v in spec["volumes"] if v["name"] == "secrets-sidecar-config")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"] == "shop-secrets-sidecar"
    text = sidecar_config(docs)
    annotation = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (
        annotation["checksum/secrets-sidecar-config"]
        == hashlib.sha256(text.rstrip("\n").encode()).hexdigest()
    )
    config = yaml.safe_load(text)
    assert set(config["classes"]) == {"payments"}  # the example's class stays out
    assert config["backend"]["auth"]["role"] == "my-app"
    checked = check_config(text, tmp_path)
    assert checked.returncode == 0, checked.stderr


def test_the_charts_readme_shows_the_lines_the_example_application_uses():
    """The few lines in the README are the ones examples/helm-app renders with (tested above)."""
    readme = (CHART / "README.md").read_text()
    template = (ROOT / "examples" / "helm-app" / "templates" / "deployment.yaml").read_text()
    includes = [
        line.strip() for line in template.splitlines() if 'include "secrets-sidecar.' in line
    ]
    assert len(includes) == 8
    for line in includes:
        assert line in readme, line


def test_the_install_notes_tell_how_to_read_a_secret_from_the_app_container():
    rendered = helm_python.Chart.load(str(CHART)).render(None, name="demo", namespace="apps")
    notes = rendered["secrets-sidecar/templates/NOTES.txt"]
    assert 'curl -H "X-Sidecar-Token: $(cat /run/secrets-sidecar/token)"' in notes
    assert "http://127.0.0.1:8100/secrets/" in notes
    assert "kubectl -n apps logs deploy/demo-secrets-sidecar-example -c app" in notes
    assert "kubectl -n apps exec deploy/demo-secrets-sidecar-example -c app -- python -c" in notes


def test_native_mode_refuses_a_cluster_older_than_1_29_and_classic_mode_does_not(tmp_path: Path):
    """Helm's lint turns `fail` into a log line and the SDK renders for its own default
    Kubernetes version only, so a wrapper chart hands the sidecar's container template the
    capabilities of a 1.28 cluster."""
    wrapper = tmp_path / "wrapper"
    (wrapper / "templates").mkdir(parents=True)
    shutil.copytree(CHART, wrapper / "charts" / "secrets-sidecar")
    (wrapper / "Chart.yaml").write_text("apiVersion: v2\nname: wrapper\nversion: 0.1.0\n")
    (wrapper / "values.yaml").write_text("kube: v1.28.9\n")
    (wrapper / "templates" / "pod.yaml").write_text(
        '{{- $caps := dict "KubeVersion" (dict "Version" .Values.kube) }}\n'
        'containers: {{ include "secrets-sidecar.container" '
        '(dict "root" (dict "Capabilities" $caps) "values" (index .Values "secrets-sidecar")) '
        "| nindent 2 }}\n"
    )
    values = {"secrets-sidecar": {"mode": "native"}}
    with pytest.raises(helm_python.HelmError) as refused:
        render(values, chart=wrapper)
    assert "mode=native needs Kubernetes 1.29 or later (this is v1.28.9" in str(refused.value)
    assert render(values | {"kube": "v1.29.0"}, chart=wrapper)
    classic = {"secrets-sidecar": {"mode": "classic"}}
    assert render(classic, chart=wrapper)


def test_an_external_snapshot_volume_is_mounted_but_left_to_the_workload():
    """snapshot.volume=external: a StatefulSet's volumeClaimTemplate (or any volume) named
    secrets-sidecar-snapshot takes the emptyDir's place."""
    spec = _the_pod(render({"snapshot": {"volume": "external"}}))
    assert "secrets-sidecar-snapshot" not in {v["name"] for v in spec["volumes"]}
    mounts = {m["name"] for m in containers(spec)["secrets-sidecar"]["volumeMounts"]}
    assert "secrets-sidecar-snapshot" in mounts


def test_approle_logs_in_at_the_configured_mount():
    values = {
        "auth": {"method": "approle", "approle": {"roleId": "r", "secretName": "s", "mount": "ar"}}
    }
    auth = yaml.safe_load(sidecar_config(render(values)))["backend"]["auth"]
    assert auth == {
        "method": "approle",
        "mount": "ar",
        "role_id": "r",
        "secret_id_file": "/etc/secrets-sidecar/approle/secret_id",
    }
