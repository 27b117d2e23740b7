"""A request holds the model copy it runs on, and lets go of it exactly once (kernel/requests.py).

The request table is the only writer of that hold: it takes it when a request is made, moves it when
a dead driver's request resumes on a replica, and gives it back when the request ends, whichever way.
Built here from real tables (processes, quotas, a driver port with no supervisor behind it).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llmos.kernel.config import Settings
from llmos.kernel.driverport import DriverPort
from llmos.kernel.errors import DoubleRelease, SyscallError
from llmos.kernel.models import ModelEntry
from llmos.kernel.principals import PrincipalTable
from llmos.kernel.process import CallContext, ProcessTable
from llmos.kernel.quotas import Quotas
from llmos.kernel.requests import RELEASED, RequestState, RequestTable


def request(rid: int):
    return SimpleNamespace(rid=rid, model="m", holds=None)


def copy_of(device: str = "cpu") -> ModelEntry:
    return ModelEntry("m", None, device, "generate", state="ready")


@pytest.fixture
def world(tmp_path):
    """A request table over one process of alice's, and what it tells of each request that ends."""
    principals = PrincipalTable(tmp_path, ("infer",), ("infer",))
    principals.load()
    principals.add("alice", None, {}, "tcp://h:1")
    procs = ProcessTable()
    proc = procs.register(b"a", "app", frozenset({"infer"}), "alice", "alice", None)
    table = RequestTable(procs, Quotas(Settings(), principals), DriverPort(), max_per_process=8)
    told = []
    table.on_end.append(lambda req, was, error, result: told.append((req.rid, was, error, result)))
    return SimpleNamespace(table=table, proc=proc, told=told,
                           ctx=lambda client_id: CallContext(None, [b"a"], client_id, proc, "alice"))


async def test_a_copy_is_in_use_while_requests_hold_it_and_idle_after(world):
    entry = copy_of()
    a = world.table.new(world.ctx(1), "infer", entry, {})
    b = world.table.new(world.ctx(2), "infer", entry, {})
    assert entry.in_use == 2 and not entry.idle
    assert world.table.in_flight(world.proc.pid) == 2 and world.table.by_client(world.proc.pid, 2) is b
    world.table.end(a, result={"text": ""})
    world.table.end(b, SyscallError("ECANCELED", "stop"))
    assert entry.in_use == 0 and entry.idle and a.holds is RELEASED and b.holds is RELEASED
    assert world.table.of(world.proc.pid) == {} and len(world.table) == 0


async def test_ending_twice_tells_once_and_releases_once(world):
    entry = copy_of()
    a = world.table.new(world.ctx(1), "infer", entry, {})
    world.table.end(a, result={"text": "x"})
    world.table.end(a, SyscallError("ECANCELED", "again"))      # a cancel racing the result: nothing more
    assert world.told == [(a.rid, RequestState.QUEUED, None, {"text": "x"})]
    assert a.future.result() == {"text": "x"} and entry.in_use == 0


async def test_a_resumed_request_moves_its_hold_to_the_replica(world):
    old, replica = copy_of("cpu"), copy_of("cpu:1")
    a = world.table.new(world.ctx(1), "infer", old, {})
    world.table.running(a)
    world.table.requeued(a, replica)
    assert (old.in_use, replica.in_use, a.device, a.state) == (0, 1, "cpu:1", RequestState.QUEUED)
    world.table.end(a, SyscallError("ECANCELED", "stop"))
    assert replica.in_use == 0


async def test_the_index_by_process_is_bounded_by_what_is_in_flight(world):
    """A refused request leaves nothing behind; an ended one takes its entry with it."""
    entry = copy_of()
    held = [world.table.new(world.ctx(i), "infer", entry, {}) for i in range(1, 9)]
    with pytest.raises(SyscallError) as refused:
        world.table.new(world.ctx(9), "infer", entry, {})
    assert refused.value.errno == "EAGAIN" and len(world.table.of(world.proc.pid)) == 8
    for req in held:
        world.table.end(req, SyscallError("ECANCELED", "stop"))
    assert world.table._by_process == {} and entry.in_use == 0


async def test_a_second_release_is_an_error_not_a_count_kept_from_going_negative():
    entry = copy_of()
    a, b = request(1), request(2)
    RequestTable._hold(entry, a)
    RequestTable._hold(entry, b)
    RequestTable._release(a)
    with pytest.raises(DoubleRelease, match="request 1 released m twice"):
        RequestTable._release(a)
    assert entry.in_use == 1          # b still holds it: the double release took nothing from b
    with pytest.raises(DoubleRelease, match="already holds"):
        RequestTable._hold(entry, b)


async def test_a_release_after_the_copy_was_reloaded_leaves_the_new_copy_alone():
    old, new = copy_of(), copy_of()
    a, b = request(1), request(2)
    RequestTable._hold(old, a)           # then m was evicted and loaded again as `new`
    RequestTable._hold(new, b)
    RequestTable._release(a)
    assert new.in_use == 1 and old.in_use == 0


async def test_a_request_on_no_model_has_nothing_to_release():
    a = request(1)
    RequestTable._release(a)
    assert a.holds is RELEASED
