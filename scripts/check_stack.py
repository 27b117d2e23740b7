"""Check a running compose stack the way an operator would (scripts/ci-containers.sh runs it):

    python3 scripts/check_stack.py --gateway http://127.0.0.1:18000 --prometheus http://127.0.0.1:19090 \
        --api-key sk-llmos-... --container llmos-ci-kernel-1 --container llmos-ci-gateway-1

One chat completion through the gateway (the kernel container answers it); Prometheus scrapes both
jobs (`up == 1`) and sees the kernel ready (`llmos_ready == 1`, asked by the container's health check);
every expression of the Grafana dashboard is one that Prometheus accepts; each llmos container runs
as a non-root user with no capabilities. Exits 1 with what failed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "llmos.json"
JOBS = ("llmos", "llmos-gateway")


def get_json(url: str, headers: dict | None = None, body: dict | None = None, timeout: float = 120) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def query(prometheus: str, expr: str) -> dict:
    return get_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def dashboard_exprs() -> list[str]:
    """Every expression of the dashboard, its $instance variable as Grafana expands "All" (.*)."""
    board = json.loads(DASHBOARD.read_text())
    panels = [p for top in board["panels"] for p in [top, *top.get("panels", [])]]
    variables = [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    return [e.replace("$instance", ".*") for e in exprs] + [re.sub(r"^label_values\((\w+).*", r"\1", v) for v in variables]


def check_chat(gateway: str, api_key: str) -> str:
    answer = get_json(f"{gateway}/v1/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
                      body={"model": "smollm2-135m-instruct", "max_tokens": 16,
                            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    text = answer["choices"][0]["message"]["content"]
    assert text.strip(), f"an empty answer: {answer}"
    return text


def wait_for(what: str, probe, timeout: float) -> None:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last is True:
                return
        except Exception as exc:  # noqa: BLE001 - a probe's error is what the message reports
            last = exc
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout:g} s (last: {last})")


def scraped(prometheus: str) -> bool | dict:
    result = query(prometheus, "up")["data"]["result"]
    up = {r["metric"]["job"]: r["value"][1] for r in result}
    return all(up.get(job) == "1" for job in JOBS) or up


def ready(prometheus: str) -> bool | list:
    result = query(prometheus, "llmos_ready")["data"]["result"]
    return bool(result) and all(r["value"][1] == "1" for r in result) or result


def unprivileged(container: str) -> None:
    status = subprocess.run(["docker", "exec", container, "cat", "/proc/1/status"], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uids = fields["Uid"].split()
    assert all(u != "0" for u in uids), f"{container} runs as uid {uids}"
    for cap in ("CapEff", "CapPrm", "CapBnd"):
        assert int(fields[cap].strip(), 16) == 0, f"{container} holds capabilities: {cap} {fields[cap].strip()}"
    assert fields["NoNewPrivs"].strip() == "1", f"{container} may gain privileges"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gateway", required=True)
    p.add_argument("--prometheus", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--container", action="append", default=[])
    args = p.parse_args()
    checks = [
        ("a chat completion through the gateway", lambda: print(f"  answer: {check_chat(args.gateway, args.api_key)!r}")),
        ("Prometheus scrapes both jobs (up == 1)", lambda: wait_for("up == 1", lambda: scraped(args.prometheus), 90)),
        ("the kernel is ready (llmos_ready == 1)", lambda: wait_for("llmos_ready == 1", lambda: ready(args.prometheus), 90)),
        ("Prometheus accepts every dashboard expression", lambda: [
            query(args.prometheus, e)["status"] == "success" or sys.exit(f"refused: {e}") for e in dashboard_exprs()]),
        *[(f"{c} runs as non-root with no capabilities", lambda c=c: unprivileged(c)) for c in args.container],
    ]
    failed = 0
    for name, check in checks:
        started = time.monotonic()
        try:
            check()
            print(f"ok    {name} ({time.monotonic() - started:.1f} s)")
        except (AssertionError, OSError, KeyError, subprocess.CalledProcessError) as exc:
            failed += 1
            print(f"FAIL  {name}: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
