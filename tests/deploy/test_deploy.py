"""The deployment files in deploy/ are checked against the schemas, against each
other, against the Dockerfile and against what the binary accepts and serves.

Run by scripts/test (pytest tests/deploy); needs tests/deploy/requirements.txt and a
built binary (cargo test builds it first).
"""
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/kubernetes"
COMPOSE = ROOT / "deploy/compose.yaml"
# Manifests Kubernetes has schemas for (the Kustomization and the ServiceMonitor
# are checked by the tests below instead).
MANIFESTS = sorted(
    p for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml", "servicemonitor.yaml")
)
# Test values for the Secret's keys: long enough for the config's rules.
SECRETS = {
    "DEADLINE_NOTIFIER_ADMIN_TOKEN": "deploy-test-admin-token-0123456789",
    "LIGHTING_API_TOKEN": "deploy-test-lighting-token-0123456789",
    "LIGHTING_SLACK_WEBHOOK": "https://hooks.slack.com/services/T000/B000/XXXX",
    "LIGHTING_PIPELINE_WEBHOOK": "https://pipeline.example.com/deadline",
    "LIGHTING_PIPELINE_SECRET": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
}


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(kind):
    found = [d for p in MANIFESTS for d in docs(p) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def configmap(name):
    return next(d for d in docs(K8S / "configmap.yaml") if d["metadata"]["name"] == name)


def deployed_config_text():
    return configmap("deadline-notifier-config")["data"]["notifier.toml"]


def deployed_config():
    return tomllib.loads(deployed_config_text())


def container():
    return one("StatefulSet")["spec"]["template"]["spec"]["containers"][0]


def port(addr):
    return int(addr.rsplit(":", 1)[1])


def dockerfile_user():
    m = re.search(r"^USER\s+(\d+):(\d+)\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    assert m, "the Dockerfile has no numeric USER uid:gid"
    return int(m.group(1)), int(m.group(2))


def env_keys(config_text):
    return set(re.findall(r'\{\s*env\s*=\s*"([A-Z0-9_]+)"\s*\}', config_text))


def binary():
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    exe = target / "debug/deadline-notifier"
    if not exe.exists():
        subprocess.run(["cargo", "build", "--locked"], cwd=ROOT, check=True)
    return exe


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_every_manifest_validates_strictly_against_the_kubernetes_schemas(version):
    r = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version,
         *[str(p) for p in MANIFESTS]],
        capture_output=True, text=True,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "ERROR" not in out, out
    assert out.count("passed") >= len(MANIFESTS), out


def test_the_kustomization_lists_every_manifest_but_the_optional_ones():
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(k["resources"])
    for name in listed:
        assert (K8S / name).exists(), name
    optional = {"secret.example.yaml", "servicemonitor.yaml"}
    assert listed == {p.name for p in MANIFESTS} - optional
    assert not listed & optional


def test_the_configmap_is_generated_from_the_config_and_templates():
    r = subprocess.run([sys.executable, str(ROOT / "scripts/deploy-configmaps.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert deployed_config_text() == (ROOT / "deploy/notifier.toml").read_text()


def test_every_template_in_the_configmap_is_mounted_where_the_renderer_looks():
    keys = set(configmap("deadline-notifier-templates")["data"])
    vol = next(v for v in one("StatefulSet")["spec"]["template"]["spec"]["volumes"]
               if v["name"] == "templates")
    mounted = {i["key"]: i["path"] for i in vol["configMap"]["items"]}
    assert set(mounted) == keys
    for key, path in mounted.items():
        kind, name = key.split(".", 1)
        assert path == f"default/{kind}/{name}"
        assert (ROOT / "templates" / path).exists(), path


def extract(tmp):
    """The ConfigMaps as the pod sees them, under `tmp`; returns the config's path."""
    templates = tmp / "templates"
    for key, text in configmap("deadline-notifier-templates")["data"].items():
        kind, name = key.split(".", 1)
        f = templates / "default" / kind / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    cfg = deployed_config()
    text = deployed_config_text()
    for old, new in [
        (f'dir = "{cfg["templates"]["dir"]}"', f'dir = "{templates}"'),
        (f'path = "{cfg["store"]["path"]}"', f'path = "{tmp / "data/notifier.sled"}"'),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    (tmp / "config").mkdir()
    path = tmp / "config/notifier.toml"
    path.write_text(text)
    return path, text


def service_env():
    return {
        "PATH": os.environ.get("PATH", ""),
        "AWS_ACCESS_KEY_ID": "AKIDDEPLOYTEST",
        "AWS_SECRET_ACCESS_KEY": "deploy-test",
        "AWS_REGION": "us-west-2",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        **SECRETS,
    }


def test_the_configmaps_config_passes_check_config_with_its_templates(tmp_path):
    path, text = extract(tmp_path)
    assert env_keys(text) <= set(SECRETS), "a secret the test does not know"
    r = subprocess.run([str(binary()), "check-config", "--config", str(path)],
                       capture_output=True, text=True, env=service_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout


def test_no_secret_is_in_the_configmap_and_the_secret_example_names_every_one():
    text = deployed_config_text()
    keys = env_keys(text)
    assert keys, "the config reads its secrets from the environment"
    for value in SECRETS.values():
        assert value not in text
    assert "hooks.slack.com/services" not in text and "whsec_" not in text
    example = one("Secret")["stringData"]
    assert keys <= set(example), keys - set(example)
    env_example = (ROOT / "deploy/.env.example").read_text()
    assert keys <= set(re.findall(r"^([A-Z0-9_]+)=", env_example, re.M))


def test_probes_ports_and_mounts_agree_with_the_config():
    cfg = deployed_config()
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == port(cfg["server"]["listen"])
    assert ports["metrics"] == port(cfg["server"]["metrics_listen"])
    for probe, path in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")]:
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    # Generous for a large store: at least two minutes before liveness.
    s = c["startupProbe"]
    assert s["periodSeconds"] * s["failureThreshold"] >= 120
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    store_dir = str(pathlib.PurePosixPath(cfg["store"]["path"]).parent)
    assert mounts["data"]["mountPath"] == store_dir
    claim = one("StatefulSet")["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"]
    assert mounts["templates"]["mountPath"] == cfg["templates"]["dir"]
    assert mounts["config"]["readOnly"] and mounts["templates"]["readOnly"]
    config_arg = c["args"][c["args"].index("--config") + 1]
    assert config_arg == f'{mounts["config"]["mountPath"]}/notifier.toml'
    svc = one("Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {
        "http": "http", "metrics": "metrics"}
    monitor = docs(K8S / "servicemonitor.yaml")[0]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    ss = one("StatefulSet")["spec"]
    assert ss["replicas"] == 1 and ss["podManagementPolicy"] == "OrderedReady"
    grace = int(cfg["server"]["shutdown_grace"].rstrip("s"))
    assert ss["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Straight to the local service, whatever proxy the environment names.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url):
    try:
        with OPENER.open(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except urllib.error.URLError:
        return None


def test_the_binary_serves_what_the_probes_and_the_metrics_port_ask_for(tmp_path):
    path, text = extract(tmp_path)
    cfg = deployed_config()
    api, metrics = free_port(), free_port()
    text = text.replace(f'listen = "{cfg["server"]["listen"]}"', f'listen = "127.0.0.1:{api}"')
    text = text.replace(f'metrics_listen = "{cfg["server"]["metrics_listen"]}"',
                        f'metrics_listen = "127.0.0.1:{metrics}"')
    path.write_text(text)
    c = container()
    probes = {c[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    proc = subprocess.Popen([str(binary()), "serve", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=service_env())
    try:
        deadline = time.monotonic() + 30
        while get(f"http://127.0.0.1:{api}/healthz") != 200:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the service did not answer /healthz"
            time.sleep(0.1)
        for p in probes:
            assert get(f"http://127.0.0.1:{api}{p}") == 200, p
        assert get(f"http://127.0.0.1:{metrics}/metrics") == 200
        assert get(f"http://127.0.0.1:{api}/metrics") == 404, "metrics moved to its own port"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_uid_and_gid_are_the_dockerfiles_everywhere():
    uid, gid = dockerfile_user()
    pod = one("StatefulSet")["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"],
            pod["securityContext"]["fsGroup"]) == (uid, gid, gid)
    sc = container()["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == (uid, gid)
    svc = yaml.safe_load(COMPOSE.read_text())["services"]["deadline-notifier"]
    assert svc["user"] == f"{uid}:{gid}"


def test_the_pod_runs_locked_down():
    pod = one("StatefulSet")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    sa = one("ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    r = container()["resources"]
    assert {"cpu", "memory"} <= set(r["requests"]) and "memory" in r["limits"]
    np = one("NetworkPolicy")["spec"]
    assert set(np["policyTypes"]) == {"Ingress", "Egress"}
    ingress = {p["port"] for rule in np["ingress"] for p in rule["ports"]}
    assert ingress == {"http", "metrics"}
    egress = {(p["port"], p["protocol"]) for rule in np["egress"] for p in rule["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (443, "TCP")}


def test_compose_validates_against_the_compose_specification():
    exe = shutil.which("check-jsonschema") or str(pathlib.Path(sys.executable).parent / "check-jsonschema")
    r = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_runs_it_locked_down_with_the_store_on_a_named_volume():
    c = yaml.safe_load(COMPOSE.read_text())
    svc = c["services"]["deadline-notifier"]
    cfg = deployed_config()
    assert svc["read_only"] is True
    assert svc["cap_drop"] == ["ALL"]
    assert svc["restart"] in ("unless-stopped", "always")
    assert svc["env_file"] == [".env"]
    assert "deploy/.env" in (ROOT / ".gitignore").read_text().split()
    assert "/healthz" in " ".join(svc["healthcheck"]["test"])
    volumes = {v.split(":")[1]: v for v in svc["volumes"]}
    store_dir = str(pathlib.PurePosixPath(cfg["store"]["path"]).parent)
    assert volumes[store_dir].split(":")[0] in c["volumes"], "the store on a named volume"
    assert volumes["/app/config/notifier.toml"].endswith(":ro")
    assert volumes[cfg["templates"]["dir"]].endswith(":ro")
    assert (COMPOSE.parent / volumes["/app/config/notifier.toml"].split(":")[0]).resolve() == \
        (ROOT / "deploy/notifier.toml")
    grace = int(cfg["server"]["shutdown_grace"].rstrip("s"))
    assert int(svc["stop_grace_period"].rstrip("s")) > grace
    assert any(p.endswith(f":{port(cfg['server']['listen'])}") for p in svc["ports"])


def container_runtime():
    for tool, probe in (("podman", ["podman", "info"]), ("docker", ["docker", "info"])):
        if shutil.which(tool) and subprocess.run(probe, capture_output=True).returncode == 0:
            return tool
    return None


def test_the_image_runs_with_the_manifests_security_settings():
    runtime = container_runtime()
    if runtime != "podman":
        pytest.skip(
            "no usable container runtime here (scripts/container-smoke.sh needs podman; "
            f"found {runtime or 'none'}): the image was not run read-only in this run"
        )
    r = subprocess.run([str(ROOT / "scripts/container-smoke.sh")], capture_output=True, text=True)
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_the_iam_policy_grants_every_call_the_service_makes():
    import json
    policy = json.loads((ROOT / "deploy/aws/notifier-policy.json").read_text())
    actions = {a for st in policy["Statement"] for a in
               ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
    assert all(st["Effect"] == "Allow" for st in policy["Statement"])
    # Every Deadline Cloud and CloudWatch Logs operation the client code calls.
    calls = set()
    for path in (ROOT / "src/deadline").rglob("*.rs"):
        calls |= set(re.findall(r"\.(batch_get_job|get_job|search_jobs|list_jobs|list_steps|list_tasks|"
                                r"batch_get_session_action|batch_get_session|get_log_events)\(\)",
                                path.read_text()))
    wanted = {"".join(w.capitalize() for w in c.split("_")) for c in calls}
    granted = {a.split(":", 1)[1] for a in actions}
    assert wanted and wanted <= granted, wanted - granted
    assert "deadline:GetBudget" not in actions, "GetBudget comes with the events stack's policy"
