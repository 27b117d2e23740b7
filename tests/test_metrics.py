"""The kernel's Prometheus metrics after a known workload: what was sent is what is counted.

One kernel (tiny model, no service host, so nobody else makes calls) runs one workload: N
generations with known max_tokens and a few calls failing with known errnos, between two
scrapes of /metrics. Each test checks one figure of the difference, or one rule of the export.
"""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from pathlib import Path

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import KernelProcess, dealer, errno_of
from llmos.specs import SYSCALLS
from llmos.specs.protocol import ERRNOS
from llmos.userland.testing import free_tcp_port

N_GENERATIONS = 4
MAX_TOKENS = 5
ABI_MD = Path(__file__).resolve().parent.parent / "specs" / "ABI.md"


def scrape(kernel: KernelProcess) -> dict[str, object]:
    """/metrics as {family name: family}, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(f"{kernel.metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families, name: str, sample: str | None = None, **labels) -> float:
    """The sum of the samples of `name` (or of its sample `sample`, e.g. a histogram's _count) with `labels`."""
    family = families[name]
    wanted = sample or family.name + ("_total" if family.type == "counter" else "")
    return sum(s.value for s in family.samples
               if s.name == wanted and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def metrics_kernel(tmp_path_factory, tiny_llama):
    port = free_tcp_port()
    k = KernelProcess(tmp_path_factory.mktemp("metrics-kernel"), model=tiny_llama,
                      extra=["--metrics", f"127.0.0.1:{port}"], env={"LLMOS_NO_SERVICES": "1"}).start()
    k.metrics_url = f"http://127.0.0.1:{port}"
    yield k
    k.stop()


@pytest.fixture(scope="module")
def workload(metrics_kernel):
    """(before, after, usages, failures): scrapes around N generations and three failing calls."""
    before = scrape(metrics_kernel)
    with metrics_kernel.client("workload") as c:
        usages = [c.infer(prompt=f"count to {i}", max_tokens=MAX_TOKENS, temperature=0.0)["usage"]
                  for i in range(N_GENERATIONS)]
        failures = Counter()
        failures[("memread", errno_of(c.memread, "no-such-region"))] += 1
        failures[("cancel", errno_of(c.cancel, 999))] += 1
        failures[("infer", errno_of(c.call, "infer", prompt="x", max_tokens=0))] += 1
    after = scrape(metrics_kernel)
    return before, after, usages, failures


def delta(workload, name: str, sample: str | None = None, **labels) -> float:
    before, after = workload[0], workload[1]
    return value(after, name, sample, **labels) - (value(before, name, sample, **labels) if name in before else 0)


def test_successful_generations_are_counted_under_infer_ok(workload):
    assert delta(workload, "llmos_syscalls", syscall="infer", errno="OK") == N_GENERATIONS


def test_failed_calls_are_counted_under_their_errno(workload):
    failures = workload[3]
    assert set(failures) == {("memread", "ENOENT"), ("cancel", "ENOENT"), ("infer", "EINVAL")}
    for (call, errno), n in failures.items():
        assert delta(workload, "llmos_syscalls", syscall=call, errno=errno) == n


def test_generation_tokens_are_the_completion_tokens_replied(workload):
    usages = workload[2]
    assert delta(workload, "llmos_generation_tokens") == sum(u["completion_tokens"] for u in usages) > 0


def test_prompt_tokens_are_the_prompt_tokens_replied(workload):
    usages = workload[2]
    assert delta(workload, "llmos_prompt_tokens") == sum(u["prompt_tokens"] for u in usages) > 0


def test_each_generation_has_one_time_to_first_token(workload):
    assert delta(workload, "llmos_time_to_first_token_seconds", "llmos_time_to_first_token_seconds_count") \
        == N_GENERATIONS


def test_each_generation_has_one_end_to_end_latency_and_one_success(workload):
    assert delta(workload, "llmos_e2e_request_latency_seconds", "llmos_e2e_request_latency_seconds_count") \
        == N_GENERATIONS
    assert delta(workload, "llmos_request_success") == N_GENERATIONS


def test_inter_token_latencies_come_between_token_events(workload):
    """A generation of k token events has k - 1 intervals: at most max_tokens - 1 each."""
    itl = delta(workload, "llmos_inter_token_latency_seconds", "llmos_inter_token_latency_seconds_count")
    assert 0 < itl <= N_GENERATIONS * (MAX_TOKENS - 1)


def test_an_unknown_syscall_is_counted_as_unknown_not_by_its_name(metrics_kernel):
    before = scrape(metrics_kernel)
    with dealer(metrics_kernel.socket) as sock:
        sock.send(msgpack.packb({"v": 1, "id": 7, "call": "pid-4242-secret", "args": {}}))
        assert msgpack.unpackb(sock.recv())["error"]["errno"] == "ENOSYS"
    after = scrape(metrics_kernel)
    assert value(after, "llmos_syscalls", syscall="unknown", errno="ENOSYS") \
        - value(before, "llmos_syscalls", syscall="unknown", errno="ENOSYS") == 1
    assert not any("4242" in str(s.labels) for f in after.values() for s in f.samples)


def test_labels_are_bounded_names_never_pids_or_ids(metrics_kernel, workload):
    families = scrape(metrics_kernel)
    with metrics_kernel.client("labels") as c:
        devices = {d["name"] for d in c.devices()}
        models = {m["name"] for m in c.models()["loaded"]}
        pids = {str(p["pid"]) for p in c.ps()}
    allowed = {"syscall": set(SYSCALLS) | {"unknown"}, "errno": set(ERRNOS) | {"OK"}, "device": devices,
               "model": models, "finish_reason": {"stop", "length"}, "reason": {"bad_key"}}
    for family in families.values():
        for s in family.samples:
            for key, label in s.labels.items():
                if key == "le":
                    continue
                assert label in allowed[key], f"{s.name}{{{key}={label!r}}}"
                assert label not in pids


def contract_metrics() -> dict[str, str]:
    """The metrics specs/ABI.md promises, name -> type, from its table."""
    section = ABI_MD.read_text().split("## Metrics and health", 1)[1]
    return dict(re.findall(r"^\| `(llmos_\w+)` \| (\w+) \|", section, re.M))


def test_every_metric_of_the_abi_is_exported_with_its_type(metrics_kernel, workload):
    families = scrape(metrics_kernel)
    promised = contract_metrics()
    assert len(promised) == 19
    for name, kind in promised.items():
        family = families.get(name.removesuffix("_total"))
        assert family is not None and family.type == kind, name


def test_the_auth_failure_series_is_exported_at_0_before_any_failure(metrics_kernel):
    """A rate() or increase() over a series that appears only at the first failure misses that failure."""
    samples = [s for s in scrape(metrics_kernel)["llmos_auth_failures"].samples
               if s.name == "llmos_auth_failures_total" and s.labels == {"reason": "bad_key"}]
    assert [s.value for s in samples] == [0.0]       # this kernel is on ipc only: no key is ever refused


def test_state_gauges_are_the_tables(metrics_kernel):
    with metrics_kernel.client("gauges") as c:
        families = scrape(metrics_kernel)
        device = c.devices()[0]
        processes = len(c.ps())
    assert value(families, "llmos_processes") == processes
    assert value(families, "llmos_models_loaded", device=device["name"]) == 1
    assert value(families, "llmos_device_memory_total_bytes", device=device["name"]) == device["total_bytes"]
    assert value(families, "llmos_device_memory_used_bytes", device=device["name"]) == device["used_bytes"]
    assert value(families, "llmos_num_requests_running", device=device["name"]) == 0


def test_the_stats_window_keeps_a_bounded_number_of_samples_and_seconds():
    from llmos.kernel.metrics import LATENCIES, MAX_SAMPLES, WINDOW_S, RecentWindow

    window = RecentWindow()
    for i in range(MAX_SAMPLES + 100):
        window.latency(LATENCIES[0], 0.001 * i, now=1000.0)
    for second in range(int(WINDOW_S) * 3):
        window.tokens(pid=1, n=1, now=1000.0 + second)
    assert len(window.samples[LATENCIES[0]]) == MAX_SAMPLES
    assert window.percentiles(LATENCIES[0], now=1000.0)["count"] == MAX_SAMPLES   # the latest are kept
    assert len(window.seconds) == int(WINDOW_S) + 1
