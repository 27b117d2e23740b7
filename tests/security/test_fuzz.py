"""Property tests of the frame decoder and the argument validator.

Random bytes and random request maps go to a real kernel: every one is answered with ok or an
errno the ABI lists, the kernel never falls over, and another client is served after each.
The validator alone is checked in-process on random argument maps for every syscall.
"""

from __future__ import annotations

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmos.specs import ERRNOS, SYSCALLS, ArgError
from llmos.userland.testing import KernelProcess

# Calls that could start real work (load a model, generate, run a service) or end the fuzzing
# client's process stay out of reach: the fuzzing process is not given their capabilities.
FUZZ_CAPS = ["mem", "ps", "devices", "models"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=40), st.binary(max_size=40))
map_keys = st.text(max_size=8) | st.integers(0, 9)     # int keys: the decoder takes str keys only
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(map_keys, inner, max_size=4)),
                      max_leaves=12)
call_names = st.one_of(st.sampled_from(sorted(SYSCALLS)), st.text(max_size=20), values)


@st.composite
def arg_maps(draw, call=None):
    """Maps that mix a syscall's own argument names with strangers, each bound to any value."""
    known = sorted(SYSCALLS[call].args) if call in SYSCALLS else []
    names = st.sampled_from(known) | st.text(max_size=8) if known else st.text(max_size=8)
    return draw(st.dictionaries(names, values, max_size=5))


@st.composite
def request_maps(draw):
    call = draw(call_names)
    msg = {"v": draw(st.sampled_from([1, 1, 1, 0, 2, "1", None])),
           "id": draw(st.one_of(st.integers(1, 2**31), st.integers(-5, 0), values)),
           "call": call,
           "args": draw(st.one_of(arg_maps(call if isinstance(call, str) else None), values))}
    for key in draw(st.lists(st.sampled_from(sorted(msg)), max_size=2)):
        msg.pop(key, None)                    # some keys go missing
    return msg


frames = st.one_of(st.binary(max_size=200), request_maps().map(lambda m: msgpack.packb(m, use_bin_type=True)))


@pytest.fixture(scope="module")
def fuzz_kernel(tmp_path_factory):
    k = KernelProcess(tmp_path_factory.mktemp("fuzz"), env={"LLMOS_NO_SERVICES": "1"}).start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def fuzzer(fuzz_kernel):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(fuzz_kernel.socket)
    sock.send(msgpack.packb({"v": 1, "id": 1, "call": "hello", "args": {"name": "fuzzer", "caps": FUZZ_CAPS}}))
    assert sock.poll(10_000) and msgpack.unpackb(sock.recv())["ok"]
    yield sock
    sock.close(0)
    ctx.term()


@pytest.fixture(scope="module")
def bystander(fuzz_kernel):
    with fuzz_kernel.client("bystander") as c:
        yield c


def guard(frame: bytes) -> bytes:
    """exit and hello would change what the fuzzer may call next; they are sent as unknown names."""
    try:
        msg = msgpack.unpackb(frame, raw=False)
    except Exception:
        return frame
    if isinstance(msg, dict) and msg.get("call") in ("exit", "hello", "memwrite", "memdel"):
        msg["call"] = "not_" + msg["call"]
        return msgpack.packb(msg, use_bin_type=True)
    return frame


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(frame=frames)
def test_every_frame_is_answered_ok_or_with_a_listed_errno_and_others_are_served(fuzzer, bystander, frame):
    fuzzer.send(guard(frame))
    assert fuzzer.poll(10_000), "the kernel did not answer"
    reply = msgpack.unpackb(fuzzer.recv(), raw=False)
    assert isinstance(reply, dict) and reply["ok"] in (True, False), reply
    if not reply["ok"]:
        assert reply["error"]["errno"] in ERRNOS, reply
        assert reply["error"]["errno"] not in ("EIO",), reply    # EIO here would be a kernel bug
    assert bystander.ping("still here")["payload"] == "still here"


@settings(max_examples=3000, deadline=None)
@given(data=st.data())
def test_the_validator_returns_a_map_or_raises_arg_error(data):
    name = data.draw(st.sampled_from(sorted(SYSCALLS)))
    args = data.draw(st.one_of(arg_maps(name), values))
    try:
        checked = SYSCALLS[name].validate(args)
    except ArgError:
        return
    assert isinstance(checked, dict) and set(checked) == set(SYSCALLS[name].args)
