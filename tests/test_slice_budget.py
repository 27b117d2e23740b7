"""A call in progress sizes its slices to a time (issue 25, item 3): while others wait on the device,
each slice takes the work that lasts about SLICE_TARGET_S at the rate its own slices ran, starting
small; with nobody waiting, the most memory allows. Specified with an injected clock."""

from __future__ import annotations

from llmos.drivers.slices import Budget, in_runs, run_to_end


class Clock:
    """Time that moves only when work says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(budget: Budget, clock: Clock, per_second: float, slices: int) -> list[int]:
    """The sizes of `slices` slices of work that goes at per_second units a second."""
    sizes = []
    for _ in range(slices):
        size = budget.size()
        with budget.timed(size):
            clock.now += size / per_second
        sizes.append(size)
    return sizes


def test_slices_start_small_then_last_the_target_time():
    clock = Clock()
    budget = Budget(first=64, most=4096, slice_s=lambda: 0.04, clock=clock)
    # 10,000 tokens a second: 400 last 40 ms; the way there grows at most 4x a slice
    assert run(budget, clock, 10_000, 4) == [64, 256, 400, 400]


def test_a_slower_device_gets_smaller_slices_and_a_faster_one_bigger():
    clock = Clock()
    budget = Budget(first=64, most=4096, slice_s=lambda: 0.04, clock=clock)
    run(budget, clock, 10_000, 4)
    assert run(budget, clock, 2_500, 2) == [400, 100]       # the machine got busy: a quarter of the rate
    assert run(budget, clock, 50_000, 3) == [100, 400, 1600]
    assert run(budget, clock, 50_000, 2) == [2000, 2000]


def test_slices_stay_within_least_and_most():
    clock = Clock()
    slow = Budget(first=64, most=4096, slice_s=lambda: 0.04, least=32, clock=clock)
    assert run(slow, clock, 100, 3) == [64, 32, 32]          # 4 tokens would last 40 ms: a forward takes 32 at least
    fast = Budget(first=64, most=300, slice_s=lambda: 0.04, clock=clock)
    assert run(fast, clock, 1e9, 3) == [64, 256, 300]


def test_with_nobody_waiting_a_slice_is_the_most_memory_allows():
    clock, seconds = Clock(), [None]
    budget = Budget(first=64, most=4096, slice_s=lambda: seconds[0], clock=clock)
    assert run(budget, clock, 10_000, 2) == [4096, 4096]
    seconds[0] = 0.04                                        # a stream arrived: back to about 40 ms
    assert run(budget, clock, 10_000, 1) == [400]


def test_time_spent_in_pauses_is_not_the_slices_own():
    """An embed's pause may run an engine step: that time says nothing about the embed's rate."""
    clock = Clock()
    budget = Budget(first=100, most=4096, slice_s=lambda: 0.04, clock=clock)

    def engine_step():
        clock.now += 0.5

    pause = budget.excluding(engine_step)
    with budget.timed(100):
        clock.now += 0.005
        pause()
        clock.now += 0.005
    assert budget.size() == 400                # 100 in 10 ms of its own: 400 in 40 ms


def test_texts_are_tokenized_in_runs_of_the_budgets_characters():
    clock = Clock()
    budget = Budget(first=10, most=1000, slice_s=lambda: 0.04, clock=clock)
    runs = []

    def tokenize(texts):
        runs.append(len(texts))
        clock.now += sum(map(len, texts)) / 1000        # 1,000 characters a second: 40 in 40 ms
        return [len(t) for t in texts]

    texts = ["abcde"] * 30
    assert run_to_end(in_runs(texts, budget, tokenize)) == [5] * 30
    assert runs == [2, 8, 8, 8, 4]        # 10 characters first, then 40 (a text is never cut)
