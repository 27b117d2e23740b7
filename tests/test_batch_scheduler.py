"""The engine's scheduler, specified on bookkeeping alone: no model, no torch.

A "pass" here stands in for the model: the plan's tokens count as computed, and every
sequence whose chunk samples gets one new token.
"""

from __future__ import annotations

import subprocess
import sys

from llmos.drivers.blocks import BlockAllocator
from llmos.drivers.batch_scheduler import BatchScheduler, Plan
from llmos.drivers.sequence import GenRequest, Sequence

BLOCK = 4   # tokens per cache block in these tests


def seq(rid: int, prompt_tokens: int, priority: int = 0, cut_in: bool = False) -> Sequence:
    req = GenRequest(rid, [7] * prompt_tokens, 100, 0.0, 1.0, 0, [], None, priority, cut_in=cut_in)
    return Sequence(req, seed=0, max_tokens=100)


def scheduler(blocks: int = 100, max_seqs: int = 8, max_batch_tokens: int = 64, cut_in_tokens: int = 0,
              forgotten: list | None = None) -> BatchScheduler:
    forget = forgotten.append if forgotten is not None else (lambda seq_id: None)
    return BatchScheduler(BlockAllocator(blocks, block_size=BLOCK), max_seqs, max_batch_tokens, cut_in_tokens, forget)


def run_pass(s: BatchScheduler, plan: Plan) -> None:
    s.computed(plan)
    for q in plan.sampled():
        q.tokens.append(9)


def work(plan: Plan) -> list[tuple[int, int]]:
    """(sequence id, tokens this pass) in plan order."""
    return [(c.seq_id, len(c.tokens)) for c in plan.chunks]


def test_the_scheduler_imports_no_torch():
    code = "import sys, llmos.drivers.batch_scheduler; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_waiting_sequences_are_admitted_by_priority_then_arrival():
    s = scheduler(max_seqs=2)
    for q in (seq(1, 3), seq(2, 3, priority=5), seq(3, 3)):
        s.add(q)
    assert work(s.schedule()) == [(2, 3), (1, 3)]
    assert [q.id for q in s.waiting] == [3]


def test_a_prefill_longer_than_the_budget_runs_in_chunks():
    s = scheduler(max_batch_tokens=8)
    s.add(seq(1, 20))
    chunks = []
    for _ in range(3):
        plan = s.schedule()
        chunks += [(c.start, len(c.tokens), c.sample) for c in plan.chunks]
        run_pass(s, plan)
    assert chunks == [(0, 8, False), (8, 8, False), (16, 4, True)]


def test_decodes_go_first_and_a_long_prefill_gets_only_the_rest_of_the_budget():
    s = scheduler(max_batch_tokens=8)
    s.add(seq(1, 3))
    run_pass(s, s.schedule())
    s.add(seq(2, 30))
    assert work(s.schedule()) == [(1, 1), (2, 7)]


def test_max_seqs_bounds_the_running_batch():
    s = scheduler(max_seqs=2)
    for rid in range(4):
        s.add(seq(rid, 2))
    s.schedule()
    assert len(s.running) == 2 and len(s.waiting) == 2


def test_the_first_in_line_waits_for_room_and_nobody_overtakes_it():
    s = scheduler(blocks=4)
    s.add(seq(1, 8))                               # 2 blocks
    run_pass(s, s.schedule())
    s.add(seq(2, 12))                              # 3 blocks: no room yet
    s.add(seq(3, 2))                               # 1 block: would fit, but comes later
    assert work(s.schedule()) == [(1, 1)]
    assert [q.id for q in s.waiting] == [2, 3]


def test_when_the_cache_runs_out_the_most_recently_admitted_sequence_is_preempted():
    forgotten = []
    s = scheduler(blocks=4, forgotten=forgotten)
    first, second, third = seq(1, 4), seq(2, 4), seq(3, 4)   # a block each; their next tokens need one more
    for q in (first, second, third):
        s.add(q)
    run_pass(s, s.schedule())
    plan = s.schedule()
    assert work(plan) == [(1, 1), (2, 1)]
    assert s.num_preemptions == 1 and forgotten == [3]
    assert s.waiting == [third] and third.num_computed == 0 and len(third.tokens) == 5
    assert s.blocks.num_free_blocks == 0


def test_a_lower_priority_sequence_is_preempted_before_a_newer_higher_one():
    s = scheduler(blocks=3)
    low, high = seq(1, 4), seq(2, 4, priority=5)
    s.add(low)
    run_pass(s, s.schedule())
    s.add(high)
    run_pass(s, s.schedule())                      # low decodes, high is admitted after it
    s.schedule()
    assert [q.id for q in s.waiting] == [1] and [q.id for q in s.running] == [2]


def test_nobody_is_admitted_while_a_running_sequence_is_short_of_cache():
    s = scheduler(blocks=3)
    for q in (seq(1, 4), seq(2, 4), seq(3, 2)):   # a block each: the whole cache
        s.add(q)
    run_pass(s, s.schedule())
    s.add(seq(4, 1, priority=5))                   # first in line, and one block would be free for it
    plan = s.schedule()                            # 1 grows by preempting 3; 2 finds no room and waits
    assert work(plan) == [(1, 1)]
    assert [q.id for q in s.waiting] == [4, 2, 3] and s.blocks.num_free_blocks == 1


def test_a_sequence_that_alone_fills_the_cache_leaves_the_plan_as_out_of_cache():
    forgotten = []
    s = scheduler(blocks=2, forgotten=forgotten)
    s.add(seq(1, 8))                               # both blocks, full
    run_pass(s, s.schedule())
    plan = s.schedule()
    assert [q.id for q in plan.out_of_cache] == [1] and not plan
    assert not s.has_work() and forgotten == [1] and s.blocks.num_free_blocks == 2


def test_remove_takes_a_sequence_out_and_frees_its_blocks():
    forgotten = []
    s = scheduler(blocks=4, forgotten=forgotten)
    running, waiting = seq(1, 8), seq(2, 1)
    s.add(running)
    s.schedule()
    s.add(waiting)
    s.remove(running)
    s.remove(waiting)
    assert not s.has_work() and s.blocks.num_free_blocks == 4 and forgotten == [1, 2]


# --- cut-ins ---------------------------------------------------------------------------------


def test_only_waiting_cut_ins_whose_whole_prompt_fits_the_room_cut_in():
    s = scheduler(cut_in_tokens=8)
    for q in (seq(1, 3), seq(2, 12, cut_in=True), seq(3, 5, cut_in=True)):
        s.add(q)
    s.begin_step()
    plan = s.schedule_cut_ins()
    assert work(plan) == [(3, 5)] and plan.chunks[0].sample
    assert s.num_cut_ins == 1 and [q.id for q in s.waiting] == [1, 2]


def test_cut_ins_share_one_room_per_step():
    s = scheduler(cut_in_tokens=8)
    s.add(seq(1, 5, cut_in=True))
    s.begin_step()
    assert work(s.schedule_cut_ins()) == [(1, 5)]
    s.add(seq(2, 5, cut_in=True))
    assert not s.schedule_cut_ins()                # 3 tokens of room left this step
    s.begin_step()
    assert work(s.schedule_cut_ins()) == [(2, 5)]


def test_a_cut_in_never_preempts():
    s = scheduler(blocks=2, cut_in_tokens=16)
    s.add(seq(1, 5))                               # 2 blocks: the whole cache
    s.schedule()
    s.add(seq(2, 2, cut_in=True))
    s.begin_step()
    assert not s.schedule_cut_ins() and s.num_preemptions == 0 and [q.id for q in s.running] == [1]


def test_a_cut_in_waits_for_a_slot_in_the_batch():
    s = scheduler(max_seqs=1, cut_in_tokens=16)
    s.add(seq(1, 2))
    s.schedule()
    s.add(seq(2, 2, cut_in=True))
    s.begin_step()
    assert not s.schedule_cut_ins() and [q.id for q in s.waiting] == [2]


def test_no_cut_ins_without_cut_in_tokens():
    s = scheduler(cut_in_tokens=0)
    s.add(seq(1, 2, cut_in=True))
    s.begin_step()
    assert not s.schedule_cut_ins() and [q.id for q in s.waiting] == [1]
