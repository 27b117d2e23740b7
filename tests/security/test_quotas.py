"""A user's quotas: finite by default (a share of each device, a token rate), raised by the operator;
and the token rate holds while a generation runs, not only when it is admitted."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import errno_of, raised, wait_until
from llmos.kernel.config import ConfigError, Settings, load
from llmos.kernel.principals import PrincipalTable
from llmos.kernel.quotas import DEFAULT_QUOTAS, Quotas

DEFAULTS = {"processes": 64, "requests": 256, "tokens_per_minute": 60_000, "reserve_bytes": "25%",
            "mem_bytes": 1 << 30, "mem_keys": 100_000}


@pytest.fixture
def table(tmp_path):
    t = PrincipalTable(tmp_path, ("ps", "mem", "admin"), ("ps", "mem"))
    t.load()
    return t


def cpu_total(client) -> int:
    """The cpu device's memory, once its driver has said how much (0 before)."""
    def total() -> int:
        return next(d for d in client.devices() if d["name"] == "cpu")["total_bytes"]
    assert wait_until(lambda: total() > 0, timeout=60)
    return total()


# -- defaults ---------------------------------------------------------------------------------------

def test_the_default_quotas_are_finite():
    assert DEFAULT_QUOTAS == DEFAULTS


def test_the_operator_and_the_service_host_keep_no_quota_unless_the_config_says(table, tmp_path):
    quotas = Quotas(Settings(), table)
    assert all(quotas.limit(who, name) is None for who in ("operator", "services") for name in DEFAULTS)
    config = tmp_path / "config.toml"
    config.write_text('[quotas.operator]\ntokens_per_minute = 900\nreserve_bytes = "50%"\n')
    quotas = Quotas(load({"config": str(config)}, env={}), table)
    assert quotas.limit("operator", "tokens_per_minute") == 900 and quotas.limit("services", "reserve_bytes") == "50%"
    assert quotas.limit("operator", "requests") is None


def test_the_config_sets_the_defaults_and_reserve_bytes_may_be_a_share(table, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[quotas]\ntokens_per_minute = 1000\nreserve_bytes = "10%"\n')
    table.add("alice", None, {"requests": 4}, "tcp://h:1")
    quotas = Quotas(load({"config": str(config)}, env={}), table)
    assert quotas.effective("alice") == {**DEFAULTS, "tokens_per_minute": 1000, "reserve_bytes": "10%", "requests": 4}


def test_the_readme_shows_the_default_quotas(table, tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in readme.split("```toml\n")[1:] if b.startswith("[quotas]")).split("```")[0]
    config = tmp_path / "config.toml"
    config.write_text(block)
    table.add("alice", None, {}, "tcp://h:1")
    assert Quotas(load({"config": str(config)}, env={}), table).effective("alice") == DEFAULT_QUOTAS


@pytest.mark.parametrize("value", ['"150%"', '"0.5%%"', '"-5%"', '"lots"'])
def test_a_reserve_share_that_is_no_percentage_is_refused(tmp_path, value):
    config = tmp_path / "config.toml"
    config.write_text(f"[quotas]\nreserve_bytes = {value}\n")
    with pytest.raises(ConfigError, match="reserve_bytes"):
        load({"config": str(config)}, env={})


def test_a_new_user_cannot_reserve_all_of_a_devices_memory(tcp_kernel, make_user):
    _, key = make_user()
    with tcp_kernel.client("greedy", key=key) as c:
        error = raised(c.alloc_gpu, cpu_total(c), device="cpu")
        assert error.errno == "EDQUOT" and "reserve_bytes" in error.message and "25%" in error.message


def test_a_users_reservations_on_a_device_stop_at_its_share(tcp_kernel, make_user):
    _, key = make_user()
    with tcp_kernel.client("two-allocs", key=key) as c:
        total = cpu_total(c)
        c.alloc_gpu(total // 8, device="cpu")
        c.alloc_gpu(total // 8, device="cpu")
        assert errno_of(c.alloc_gpu, total // 8, device="cpu") == "EDQUOT"


def test_an_override_raises_a_users_share(tcp_kernel, make_user):
    _, key = make_user(quotas={"reserve_bytes": "60%"})
    with tcp_kernel.client("big", key=key) as c:
        c.alloc_gpu(cpu_total(c) // 2, device="cpu")


def test_user_add_answers_and_prints_the_effective_quotas(tcp_kernel, operator):
    r = tcp_kernel.cli("user", "add", "quota-shown", "--quota", "requests=4", "--quota", "reserve_bytes=10%")
    try:
        assert r.returncode == 0, r.stderr
        line = next(line for line in r.stdout.splitlines() if line.startswith("quotas:"))
        for shown in ("processes=64", "requests=4", "tokens_per_minute=60000", "reserve_bytes=10%", "mem_bytes=1GiB",
                      "mem_keys=100000"):
            assert shown in line.split(), line
        listed = next(u for u in operator.user_list()["users"] if u["name"] == "quota-shown")
        assert listed["effective_quotas"] == {**DEFAULTS, "requests": 4, "reserve_bytes": "10%"}
    finally:
        operator.user_remove("quota-shown")


def test_user_add_refuses_a_share_for_a_count(operator):
    assert errno_of(operator.user_add, "share-count", quotas={"requests": "10%"}) == "EINVAL"


# -- the token rate while a generation runs ---------------------------------------------------------

@pytest.fixture(scope="module")
def rate_limited_key(tcp_model_kernel):
    """A user whose token rate is 50 a minute."""
    with tcp_model_kernel.client("console", caps=["admin"]) as op:
        key = op.user_add("slow", quotas={"tokens_per_minute": 50})["key_file"]
        yield key
        op.user_remove("slow")


def test_a_generation_past_the_token_rate_ends_with_edquot_after_the_quota(tcp_model_kernel, rate_limited_key):
    with tcp_model_kernel.client("long-story", key=rate_limited_key) as c:
        stream = c.stream(prompt="Tell me a long story.", max_tokens=500, temperature=0.0)
        deltas = []
        error = raised(lambda: deltas.extend(stream))
        assert error.errno == "EDQUOT" and "tokens_per_minute" in error.message and error.retry_after > 0
        assert deltas                                        # the text so far was streamed
        generated = next(p["tokens"] for p in c.stats()["processes"] if p["pid"] == c.info["pid"])
        assert 50 <= generated < 60
        error = raised(c.infer, prompt="more", max_tokens=5)
        assert error.errno == "EAGAIN" and error.retry_after > 0


def test_a_services_generation_is_charged_to_its_callers_token_rate(table):
    """The service host's infer for an svc_call (share = the caller's pid) spends the caller's tokens, not
    the host's (which has no quota): the caller's generation through a service stops at its rate too."""
    import asyncio

    from llmos.kernel.devices import Devices
    from llmos.kernel.driverevents import DriverEvents
    from llmos.kernel.driverport import DriverPort
    from llmos.kernel.metrics import Metrics
    from llmos.kernel.process import CallContext, ProcessTable
    from llmos.kernel.requests import RequestTable
    from llmos.specs.channel import TokenEvent

    table.add("alice", None, {"tokens_per_minute": 3}, "tcp://h:1")
    procs, quotas, port, ended = ProcessTable(), Quotas(Settings(), table), DriverPort(), []
    caller = procs.register(b"a", "app", frozenset(), "alice", "alice", None)
    host = procs.register(b"s", "llmos-services", frozenset(), "services", "operator", None)
    requests = RequestTable(procs, quotas, port, max_per_process=8)
    devices = Devices(["cpu"], port, requests, procs, max_running_per_process=4)
    events = DriverEvents(Settings(), devices, requests, models=None, jobs=None, procs=procs, quotas=quotas,
                          devmem=None, metrics=Metrics(), fail_boot=print)

    async def generate() -> None:
        req = requests.new(CallContext(None, [b"s"], 1, host, "services"), "infer", None, {}, share=caller.pid,
                           device="cpu")
        requests.end = lambda r, error=None, result=None: ended.append((r.rid, error))
        events._on_events([TokenEvent(req.rid, "x", tokens=1) for _ in range(3)])

    asyncio.run(generate())
    assert caller.tokens == 3 and len(ended) == 1 and ended[0][1].errno == "EDQUOT" and "alice" in ended[0][1].message


def test_a_removed_users_token_window_is_forgotten(table):
    table.add("alice", None, {"tokens_per_minute": 100}, "tcp://h:1")
    quotas = Quotas(Settings(), table)
    quotas.charge_tokens("alice", 60)
    assert quotas._used["alice"] == 60
    quotas.forget("alice")
    assert "alice" not in quotas._tokens and "alice" not in quotas._used
    assert quotas.charge_tokens("alice", 60) is None       # a user added again starts its minute afresh
