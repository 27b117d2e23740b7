"""The driver's outbox (drivers/outbox.py): fast steps' tokens go out together, nothing is lost or late."""

from __future__ import annotations

from llmos.drivers.outbox import Outbox
from llmos.specs.channel import TokenEvent


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def token(rid: int, text: str, ids: list[int], **kw) -> TokenEvent:
    return TokenEvent(rid, text, len(ids), ids=ids, **kw)


def test_a_first_token_goes_at_once_and_the_next_fast_ones_are_merged_until_the_interval():
    clock = Clock()
    box = Outbox(interval_s=0.02, clock=clock)
    box.add([token(1, "Hel", [7])])
    assert [e.delta for e in box.take(more_work=True)] == ["Hel"]      # time to first token is not held
    clock.now += 0.005
    box.add([token(1, "lo", [8], logprobs=[{"a": 1}])])
    assert box.take(more_work=True) == []                             # 5 ms after the last frame: held
    clock.now += 0.005
    box.add([token(1, " wor", [9], logprobs=[{"b": 2}])])
    assert box.take(more_work=True) == []
    clock.now += 0.011
    box.add([token(1, "ld", [10], logprobs=[{"c": 3}])])
    [ev] = box.take(more_work=True)                                   # 21 ms: out, as one event
    assert (ev.delta, ev.tokens, ev.ids, ev.logprobs) == ("lo world", 3, [8, 9, 10], [{"a": 1}, {"b": 2}, {"c": 3}])


def test_a_final_event_flushes_what_was_held_merged_into_it():
    clock = Clock()
    box = Outbox(interval_s=0.02, clock=clock)
    box.add([token(1, "a", [1]), token(2, "x", [5])])
    box.take(more_work=True)
    box.add([token(1, "b", [2]), token(2, "y", [6])])
    assert box.take(more_work=True) == []
    box.add([TokenEvent(1, "c", 1, "stop", {"completion_tokens": 3}, ids=[3])])
    out = {e.rid: e for e in box.take(more_work=True)}
    assert (out[1].delta, out[1].tokens, out[1].finish, out[1].ids) == ("bc", 2, "stop", [2, 3])
    assert out[1].usage == {"completion_tokens": 3}
    assert (out[2].delta, out[2].finish) == ("y", None)                # the other stream rides along


def test_nothing_is_held_once_the_driver_has_no_more_work_nor_any_error_or_progress():
    clock = Clock()
    box = Outbox(interval_s=0.02, clock=clock)
    box.add([token(1, "a", [1])])
    box.take(more_work=True)
    box.add([token(1, "b", [2])])
    assert [e.delta for e in box.take(more_work=False)] == ["b"]     # no step would come to flush it
    box.add([TokenEvent(3, "", 0, prefill=[256, 1024])])
    assert box.take(more_work=True)[0].prefill == [256, 1024]
    box.add([TokenEvent.failed(4, "EIO", "boom")])
    assert box.take(more_work=True)[0].errno == "EIO"


def test_a_cancelled_request_leaves_nothing_held_and_a_new_one_of_the_same_id_starts_fresh():
    clock = Clock()
    box = Outbox(interval_s=0.02, clock=clock)
    box.add([token(1, "a", [1])])
    box.take(more_work=True)
    box.add([token(1, "b", [2])])
    box.drop(1)
    assert box.take(more_work=True) == [] and not box.held and not box.started
