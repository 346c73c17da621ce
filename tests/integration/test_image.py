"""The container image, built by podman from the project's Dockerfile on a Debian base made
locally (no registry is reachable), then run with its own entrypoint by buildah against the
test OpenBao on loopback. Marked ``image``: ``make image-test`` runs it (it needs podman,
buildah and debootstrap, which ``make image-test`` installs); CI runs it after ``make test``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import __version__
from sidecar.dev.openbao import DevOpenBao, free_port
from tests.conftest import CLASSES

# Building the base and the image takes about a minute here; allow for a slower machine.
pytestmark = [pytest.mark.image, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
BASE = "localhost/secrets-sidecar-base:bookworm"
IMAGE = "localhost/secrets-sidecar:test"
CA = "/etc/ssl/certs/ca-certificates.crt"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image, built from the Dockerfile on a base with Python that debootstrap made."""
    for tool in ("podman", "buildah", "debootstrap"):
        assert shutil.which(tool), f"{tool} is missing: run `make image-test`, which installs it"
    if subprocess.run(["podman", "image", "exists", BASE]).returncode != 0:
        root = tmp_path_factory.mktemp("base") / "root"
        _run(
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(root),
        )
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        _run_with_stdin = subprocess.run(
            ["podman", "import", "-", BASE], stdin=tar.stdout, capture_output=True, timeout=600
        )
        assert tar.wait() == 0 and _run_with_stdin.returncode == 0
    _run(
        "podman",
        "build",
        "--isolation=chroot",
        "--build-arg",
        f"BASE_IMAGE={BASE}",
        "--build-arg",
        f"VERSION={__version__}",
        "-v",
        f"{CA}:{CA}:ro",
        "-t",
        IMAGE,
        str(ROOT),
    )
    return IMAGE


@pytest.fixture
def container(image: str) -> Iterator[str]:
    name = _run("buildah", "from", image).stdout.strip()
    yield name
    subprocess.run(["buildah", "rm", name], capture_output=True)


def _config(image: str) -> dict[str, object]:
    return json.loads(_run("podman", "image", "inspect", image).stdout)[0]["Config"]


def test_the_image_runs_as_a_fixed_non_root_user_with_the_sidecar_as_entrypoint(image: str):
    config = _config(image)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["sidecar", "run"]
    assert config["StopSignal"] == "SIGTERM"
    assert "Healthcheck" not in config
    assert config["Labels"]["org.opencontainers.image.version"] == __version__
    assert config["Labels"]["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_the_project_adds_at_most_60_mb_to_its_base(image: str):
    """What the image costs over its base: the venv with the runtime dependencies only."""
    sizes = {
        name: int(_run("podman", "image", "inspect", "--format", "{{.Size}}", name).stdout)
        for name in (BASE, image)
    }
    added = sizes[image] - sizes[BASE]
    assert 0 < added <= 60 * 1000 * 1000, f"{added / 1e6:.1f} MB added to the base"


def test_version_and_check_config_run_inside_and_dev_tools_are_not_there(
    container: str, tmp_path: Path
):
    version = _run(
        "buildah", "run", "--isolation", "chroot", container, "--", "sidecar", "--version"
    )
    assert version.stdout.strip() == f"sidecar {__version__}"
    absent = subprocess.run(
        [
            "buildah",
            "run",
            "--isolation",
            "chroot",
            container,
            "--",
            "sh",
            "-c",
            "command -v bao || command -v pytest || command -v gcc || ls /root/.cache/pip",
        ],
        capture_output=True,
        text=True,
    )
    assert absent.returncode != 0, absent.stdout  # no OpenBao binary, pytest, compiler, pip cache


def test_the_image_serves_a_secret_from_the_store(container: str, tmp_path: Path):
    store = DevOpenBao(tmp_path / "store").start()
    try:
        store.kv_put("app/db", {"password": "image-password"})
        folder = tmp_path / "conf"
        folder.mkdir(mode=0o777)
        folder.chmod(0o777)  # the image's user (10001) writes its token files here
        (folder / "store-token").write_text(store.root_token)
        (folder / "store-token").chmod(0o644)
        port = free_port()
        (folder / "sidecar.yaml").write_text(
            yaml.safe_dump(
                {
                    "listen": f"127.0.0.1:{port}",
                    "metrics_listen": f"127.0.0.1:{free_port()}",
                    "caller_token_file": "/conf/caller/token",
                    "admin_token_file": "/conf/admin/token",
                    "backend": {
                        "address": store.addr,
                        "auth": {"method": "token", "token_file": "/conf/store-token"},
                    },
                    "classes": CLASSES,
                    "secrets": [{"match": "secret/app/**", "class": "standard"}],
                }
            )
        )
        checked = _run(
            "buildah",
            "run",
            "--isolation",
            "chroot",
            "-v",
            f"{folder}:/conf",
            container,
            "--",
            "sidecar",
            "check-config",
            "/conf/sidecar.yaml",
            "--files",
        )
        assert "configuration is valid" in checked.stdout
        entrypoint = _config(IMAGE)["Entrypoint"]
        process = subprocess.Popen(
            [
                "buildah",
                "run",
                "--isolation",
                "chroot",
                "-v",
                f"{folder}:/conf",
                "--env",
                "SIDECAR_CONFIG=/conf/sidecar.yaml",
                container,
                "--",
                *entrypoint,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while not (folder / "caller" / "token").exists():
                assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the sidecar in the image did not start"
                time.sleep(0.2)
            token = (folder / "caller" / "token").read_text().strip()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/secrets/secret/app/db?field=password",
                headers={"X-Sidecar-Token": token},
            )
            for _ in range(100):
                try:
                    with urllib.request.urlopen(request, timeout=5) as answer:
                        assert answer.read() == b"image-password"
                        break
                except OSError:
                    time.sleep(0.2)
            else:
                raise AssertionError("the sidecar in the image never answered")
        finally:
            process.terminate()
            process.wait(30)
    finally:
        store.stop()


# -- the chart's pod, run in the image -----------------------------------------------------------
FS_GROUP = 10001


def _lay_out(
    volume: dict[str, Any], objects: dict[tuple[str, str], dict[str, Any]], root: Path
) -> Path:
    """One pod volume on the host, as the kubelet lays it out for a pod with fsGroup: ConfigMap
    and Secret keys as files (Secrets mode|0440, group fsGroup), emptyDirs 2777 group fsGroup."""
    host = root / volume["name"]
    host.mkdir(parents=True)
    os.chown(host, 0, FS_GROUP)
    if "emptyDir" in volume:
        host.chmod(0o2777)
        return host
    kind, source = (
        ("ConfigMap", volume["configMap"])
        if "configMap" in volume
        else ("Secret", volume["secret"])
    )
    obj = objects[(kind, source.get("name") or source["secretName"])]
    data = obj["data"]
    items = source.get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        raw = data[item["key"]]
        content = base64.b64decode(raw) if kind == "Secret" else raw.encode()
        path = host / item["path"]
        path.write_bytes(content)
        os.chown(path, 0, FS_GROUP)
        path.chmod((source.get("defaultMode", 0o644) | 0o440) & 0o777)
    host.chmod(0o2755)
    return host


def _mounts(container: dict[str, Any], hosts: dict[str, Path]) -> list[str]:
    args = []
    for mount in container.get("volumeMounts", []):
        suffix = ":ro" if mount.get("readOnly") else ""
        args += ["-v", f"{hosts[mount['name']]}:{mount['mountPath']}{suffix}"]
    return args


def test_the_charts_pod_runs_in_the_image_with_only_its_volumes_written(
    container: str, tmp_path: Path
):
    """A small kubelet: the chart's pod (token auth, audit to a file, snapshot on) with each
    volume laid out as Kubernetes would, the sidecar container's entrypoint and args, then the
    example app's command (as another uid, in the pod's fsGroup), in the image. The app reads
    its secret through the sidecar with the token the sidecar wrote; after a run and a SIGTERM
    nothing in the image's filesystem has changed but what buildah itself writes: the sidecar
    writes only to its volumes. (buildah cannot mount the root read-only; this is the check.)"""
    from tests.deploy.manifests import containers, pod_specs, render

    store = DevOpenBao(tmp_path / "store").start()
    try:
        store.kv_put("example/config", {"password": "pod-secret-value-41c9"})
        port, ops = free_port(), free_port()
        docs = render(
            {
                "config": {"backend": {"address": store.addr}},
                "auth": {"method": "token", "token": {"secretName": "store-token"}},
                "audit": {"to": "file"},
                "ports": {"secrets": port, "metrics": ops},
                "example": {"intervalSeconds": 1},
            }
        )
        objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        token = base64.b64encode(store.root_token.encode()).decode()
        objects[("Secret", "store-token")] = {"data": {"token": token}}
        ((_, spec),) = pod_specs(docs)
        assert spec["securityContext"]["fsGroup"] == FS_GROUP
        hosts = {v["name"]: _lay_out(v, objects, tmp_path / "volumes") for v in spec["volumes"]}
        by_name = containers(spec)
        sidecar, app = by_name["secrets-sidecar"], by_name["app"]
        rootfs = Path(_run("buildah", "mount", container).stdout.strip())
        marker = time.time() - 1
        entrypoint = _config(IMAGE)["Entrypoint"]
        run = ["buildah", "run", "--isolation", "chroot"]
        process = subprocess.Popen(
            [*run, *_mounts(sidecar, hosts), container, "--", *entrypoint, *sidecar["args"]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(f"http://127.0.0.1:{ops}/readyz", process)
            env = [f"{e['name']}={e['value']}" for e in app["env"]]
            reader = subprocess.run(
                [
                    *run,
                    # another uid than the sidecar's, with the pod's fsGroup: as Kubernetes
                    # runs an app container whose image has its own user
                    "--user",
                    f"20002:{FS_GROUP}",
                    *_mounts(app, hosts),
                    *(x for e in env for x in ("--env", e)),
                    container,
                    "--",
                    "timeout",
                    "4",
                    *app["command"],
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            # SIGTERM as the kubelet sends it, to the sidecar itself (buildah would SIGKILL it)
            _signal_process_running(sidecar["args"][-1], signal.SIGTERM)
            log = process.communicate(timeout=30)[0].decode()
        assert process.returncode == 0, log[-3000:]
        assert '"msg":"stopped"' in log, log[-3000:]
        assert "read secret/example/config status 200 version 1 cache" in reader.stdout, (
            reader.stdout + reader.stderr
        )
        assert "pod-secret-value" not in reader.stdout + log
        assert "snapshot key file" not in log  # 0440 root:fsGroup is how Kubernetes mounts it
        snapshot = hosts["secrets-sidecar-snapshot"] / "snapshot"
        assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600  # written at shutdown
        assert (hosts["secrets-sidecar-token"] / "token").exists()
        assert (hosts["secrets-sidecar-admin-token"] / "token").exists()
        written = [
            str(p.relative_to(rootfs))
            for p in rootfs.rglob("*")
            if not p.is_symlink() and p.lstat().st_mtime > marker and not p.is_dir()
        ]
        # buildah itself writes the container's /etc/hosts, /etc/resolv.conf, /etc/hostname
        buildah_owned = {"etc/hosts", "etc/resolv.conf", "etc/hostname"}
        assert [p for p in written if p not in buildah_owned] == []
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True)
        store.stop()


def _signal_process_running(argument: str, signum: int) -> None:
    """Signal the process whose command line has ``argument`` (the sidecar in the container)."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = argument.encode() in argv and b"sidecar" in b" ".join(argv)
        if proc.name.isdigit() and ours and b"buildah" not in argv[0]:
            os.kill(int(proc.name), signum)
            return
    raise AssertionError(f"no process running with {argument}")


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the sidecar in the image never became ready"
        time.sleep(0.2)
