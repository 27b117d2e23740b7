"""A request holds the model copy it runs on, and lets go of it exactly once (kernel/models.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llmos.kernel.errors import DoubleRelease
from llmos.kernel.models import RELEASED, ModelEntry, ModelTable


def request(rid: int):
    return SimpleNamespace(rid=rid, model="m", holds=None)


async def test_a_copy_is_in_use_while_requests_hold_it_and_idle_after():
    entry = ModelEntry("m", None, "cpu", "generate", state="ready")
    a, b = request(1), request(2)
    ModelTable.hold(entry, a)
    ModelTable.hold(entry, b)
    assert entry.in_use == 2 and not entry.idle
    ModelTable.release(a)
    ModelTable.release(b)
    assert entry.in_use == 0 and entry.idle and a.holds is RELEASED


async def test_a_second_release_is_an_error_not_a_count_kept_from_going_negative():
    entry = ModelEntry("m", None, "cpu", "generate", state="ready")
    a, b = request(1), request(2)
    ModelTable.hold(entry, a)
    ModelTable.hold(entry, b)
    ModelTable.release(a)
    with pytest.raises(DoubleRelease, match="request 1 released m twice"):
        ModelTable.release(a)
    assert entry.in_use == 1          # b still holds it: the double release took nothing from b
    with pytest.raises(DoubleRelease, match="already holds"):
        ModelTable.hold(entry, b)


async def test_a_release_after_the_copy_was_reloaded_leaves_the_new_copy_alone():
    old, new = (ModelEntry("m", None, "cpu", "generate", state="ready") for _ in range(2))
    a, b = request(1), request(2)
    ModelTable.hold(old, a)           # then m was evicted and loaded again as `new`
    ModelTable.hold(new, b)
    ModelTable.release(a)
    assert new.in_use == 1 and old.in_use == 0


async def test_a_request_on_no_model_has_nothing_to_release():
    a = request(1)
    ModelTable.release(a)
    assert a.holds is RELEASED
