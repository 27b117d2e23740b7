"""deploy/ holds together with the llmos it deploys: every metric the Grafana dashboard queries is one
a real kernel exports (booted from the example config, scraped, parsed), every flag the systemd
units pass exists, and the units, the config and the scrape config agree on where things live."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from prometheus_client.parser import text_string_to_metric_families

from llmos.userland.testing import LLMOS_COMMAND, KernelProcess, free_tcp_port

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNITS = ("llmos-kernel.service", "llmos-gateway.service")
SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
                   "summary": ("", "_sum", "_count")}


def read_unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values]}}: a key may be given more than once."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, line in enumerate((DEPLOY / name).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None and not line.endswith("\\"), f"{name}:{number}: not KEY=VALUE: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(name: str, key: str) -> str:
    values = read_unit(name)["Service"][key]
    assert len(values) == 1, f"{name}: {key} given {len(values)} times"
    return values[0]


def environment(name: str) -> dict[str, str]:
    pairs = [p for line in read_unit(name)["Service"].get("Environment", []) for p in shlex.split(line)]
    return dict(p.split("=", 1) for p in pairs)


def example_config() -> dict:
    return tomllib.loads((DEPLOY / "kernel.toml").read_text())


def dashboard_exprs() -> list[str]:
    board = json.loads((DEPLOY / "grafana" / "llmos.json").read_text())
    panels = [p for top in board["panels"] for p in [top, *top.get("panels", [])]]    # rows hold panels too
    variables = [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return [t["expr"] for p in panels for t in p.get("targets", [])] + variables


def queried_series(expr: str) -> set[str]:
    return set(re.findall(r"\bllmos_[a-zA-Z0-9_]+\b", expr))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_llama) -> dict[str, str]:
    """The metric families a real kernel, booted from the example config, serves after one generation:
    {name: type}. The flags the harness passes (socket, state dir, cpu, the tiny model) override the
    config's; its [metrics] listen is kept, on a free port."""
    port = free_tcp_port()
    config = tmp_path_factory.mktemp("deploy-config") / "kernel.toml"
    config.write_text((DEPLOY / "kernel.toml").read_text().replace(example_config()["metrics"]["listen"],
                                                                   f"127.0.0.1:{port}"))
    with KernelProcess(model=tiny_llama, extra=["--config", str(config)]) as k, k.client("deploy-test") as c:
        c.infer(prompt="hello", max_tokens=4)     # every per-model series has a sample
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            text = reply.read().decode()
    families = {f.name: f.type for f in text_string_to_metric_families(text) if f.name.startswith("llmos_")}
    # prometheus_client's creation timestamps of counters and histograms: bookkeeping, not figures
    return {name: kind for name, kind in families.items()
            if not (name.endswith("_created") and name.removesuffix("_created") in families)}


def test_every_series_the_dashboard_queries_is_one_the_kernel_exports(exported):
    series = {name + suffix for name, kind in exported.items() for suffix in SERIES_SUFFIXES[kind]}
    queried = set().union(*map(queried_series, dashboard_exprs()))
    assert queried, "the dashboard queries no llmos_ metric"
    assert sorted(queried - series) == []


def test_the_dashboard_shows_every_metric_the_kernel_exports(exported):
    queried = set().union(*map(queried_series, dashboard_exprs()))
    shown = {name for name, kind in exported.items() if any(name + s in queried for s in SERIES_SUFFIXES[kind])}
    assert sorted(set(exported) - shown) == []


def test_every_quantile_is_taken_over_buckets_summed_by_le():
    quantiles = [e for e in dashboard_exprs() if "histogram_quantile" in e]
    assert quantiles
    for expr in quantiles:
        assert re.search(r"sum by \((le|[^)]*, le)\b[^)]*\) \(rate\(llmos_\w+_bucket\{", expr), expr


def test_the_units_are_hardened():
    for name in UNITS:
        s = read_unit(name)["Service"]
        assert s["User"] == ["llmos"], name
        for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                           "PrivateTmp": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6"}.items():
            assert s.get(key) == [value], f"{name}: {key}"


def test_the_gateway_starts_after_the_kernel_and_stops_with_it():
    unit = read_unit("llmos-gateway.service")["Unit"]
    assert "llmos-kernel.service" in unit["Requires"][0].split()
    assert "llmos-kernel.service" in unit["After"][0].split()


def test_the_kernel_unit_starts_only_once_llmos_health_says_ready():
    post = service("llmos-kernel.service", "ExecStartPost")
    assert re.fullmatch(r"/bin/sh -c 'until /opt/llmos/bin/llmos health; do sleep \d+; done'", post), post
    r = subprocess.run([*LLMOS_COMMAND, "health", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@functools.cache
def known_flags(command: str) -> frozenset[str]:
    """The flags `llmos COMMAND --help` lists."""
    r = subprocess.run([*LLMOS_COMMAND, command, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", r.stdout))


@pytest.mark.parametrize("unit,command", [("llmos-kernel.service", "boot"), ("llmos-gateway.service", "serve")])
def test_exec_start_runs_llmos_with_flags_it_has(unit, command):
    program, subcommand, *args = shlex.split(service(unit, "ExecStart"))
    assert (Path(program).name, subcommand) == ("llmos", command)
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert flags and sorted(flags - known_flags(command)) == []


def test_the_units_and_the_config_agree_on_where_things_live():
    kernel, gateway = (read_unit(u)["Service"] for u in UNITS)
    boot_args = shlex.split(service("llmos-kernel.service", "ExecStart"))
    config_path = Path(boot_args[boot_args.index("--config") + 1])
    assert config_path == Path("/etc") / kernel["ConfigurationDirectory"][0] / "kernel.toml"
    assert Path(example_config()["state_dir"]) == Path("/var/lib") / kernel["StateDirectory"][0]
    runtime = Path("/run") / kernel["RuntimeDirectory"][0]
    for unit in UNITS:      # their clients find the kernel's console at $XDG_RUNTIME_DIR/llmos
        assert Path(environment(unit)["XDG_RUNTIME_DIR"]) / "llmos" == runtime, unit
    keys = Path(environment("llmos-gateway.service")["LLMOS_GATEWAY_KEYS"])
    assert keys.parent == Path("/var/lib") / gateway["StateDirectory"][0]
    sysusers = (DEPLOY / "llmos.sysusers.conf").read_text().split("\n")
    assert any(line.split()[:2] == ["u", kernel["User"][0]] for line in sysusers if line.strip())


def test_prometheus_scrapes_the_metrics_address_of_the_example_config():
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job, = [j for j in scrape["scrape_configs"] if j["job_name"] == "llmos"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [example_config()["metrics"]["listen"]]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or shutil.which("llmos") is None,
                    reason="needs systemd-analyze and an installed llmos command")
def test_systemd_analyze_verifies_the_units(tmp_path):
    for name in UNITS:      # verify wants the programs to exist: this machine's llmos stands in for /opt's
        (tmp_path / name).write_text((DEPLOY / name).read_text().replace("/opt/llmos/bin/llmos", shutil.which("llmos")))
    r = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in UNITS)], capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")


# --- the container image (Dockerfile, scripts/build-image.sh) -------------------------------------

ROOT = DEPLOY.parent


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [tuple((line.split(None, 1) + [""])[:2]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def final_stage() -> dict[str, str]:
    """The instructions of the stage that ships (the last FROM on), by name."""
    lines = dockerfile()
    return dict(lines[max(i for i, (op, _) in enumerate(lines) if op == "FROM"):])


def test_the_image_builds_on_a_base_the_user_picks_and_pulls_no_frontend():
    lines = dockerfile()
    assert lines[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert [args for op, args in lines if op == "FROM"] == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    assert not re.search(r"(?im)^#\s*syntax\s*=", (ROOT / "Dockerfile").read_text())   # it would pull one
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    for variable in ("LLMOS_BASE_IMAGE", "LLMOS_IMAGE", "PIP_CERT"):
        assert variable in script


def test_the_image_installs_only_the_gathered_wheels_and_the_context_holds_nothing_else():
    installs = [args for op, args in dockerfile() if op == "RUN" and "pip install" in args]
    assert installs and all(args.count("pip install") == args.count("--no-index --find-links /wheels")
                            for args in installs)
    assert (ROOT / ".dockerignore").read_text().split("\n")[1:3] == ["*", "!build/wheelhouse"]


def test_the_image_runs_the_kernel_unprivileged_with_its_state_on_a_volume_and_a_health_check():
    ops = final_stage()
    assert ops["USER"] == "990:990" and "useradd --system --uid 990" in ops["RUN"]
    assert json.loads(ops["VOLUME"]) == ["/var/lib/llmos"]
    assert "/health/ready" in ops["HEALTHCHECK"]
    entry = json.loads(ops["ENTRYPOINT"])
    assert entry[:2] == ["llmos", "boot"] and entry[entry.index("--state-dir") + 1] == "/var/lib/llmos"
    flags = {a for a in entry + json.loads(ops["CMD"]) if a.startswith("--")}
    assert flags and sorted(flags - known_flags("boot")) == []
