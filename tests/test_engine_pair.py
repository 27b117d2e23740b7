"""The CPU engine pair's crossover: where torch takes a crowd from llama.cpp, from step times measured
on the machine (drivers/engine_pair.py), on two machines' real figures (benchmarks/README.md)."""

import pytest

from llmos.drivers.engine_pair import EnginePair, StepTime, crossover, pick_weights, probe

# Decode step times measured in-process on SmolLM2-135M, in seconds: (fixed, per sequence)
AMX_LLAMACPP, AMX_TORCH_BF16 = StepTime(0.0066, 0.0055), StepTime(0.0470, 0.0007)
AVX2_LLAMACPP, AVX2_TORCH_FP32 = StepTime(0.0040, 0.0104), StepTime(0.0650, 0.0075)
# llama.cpp's step at 1 and 12 sequences on a 2-core AVX2 EPYC, the file's Q4_1 weights and a Q8_0 copy
# (benchmarks/llamacpp_weights.py): the copy batches in blocks, the file does not
AVX2_Q4_1 = StepTime.through([(1, 0.0086), (12, 0.0571)])
AVX2_Q8_0 = StepTime.through([(1, 0.0080), (12, 0.0384)])


def test_on_an_amx_cpu_torch_takes_a_crowd_of_about_nine():
    n = crossover(AMX_LLAMACPP, AMX_TORCH_BF16, max_seqs=64)
    assert n is not None and 8 <= n <= 11
    assert AMX_TORCH_BF16.tok_s(n) >= 1.15 * AMX_LLAMACPP.tok_s(n)
    assert AMX_TORCH_BF16.tok_s(n - 1) < 1.15 * AMX_LLAMACPP.tok_s(n - 1)     # the smallest such load


def test_where_torch_is_slower_for_any_crowd_the_engine_holds_the_crowd_stays_on_llama_cpp():
    assert crossover(AVX2_LLAMACPP, AVX2_TORCH_FP32, max_seqs=32) is None
    assert crossover(AVX2_LLAMACPP, AVX2_TORCH_FP32, max_seqs=64) > 32     # only a far larger crowd would move


class Engines:
    """Stand-ins for the two engines: the pair's regime logic reads only their loads and hands over."""

    def __init__(self):
        self.load = 0
        self.runner = None       # no adapters

    def hand_over(self, other, keep=lambda seq: False):
        moved, other.load, self.load = list(range(self.load)), other.load + self.load, 0
        return moved


def test_a_pair_that_measured_no_crossover_never_moves_a_crowd():
    fast, crowd = Engines(), Engines()
    pair = EnginePair(fast, crowd, torch_from=None)
    fast.load = 64
    assert pair.rebalance() == [] and pair.regime == "llama.cpp"
    assert "llama.cpp at every load" in pair.describe()


def test_a_measured_crossover_moves_the_crowd_and_brings_it_back_below_its_share():
    fast, crowd = Engines(), Engines()
    pair = EnginePair(fast, crowd, torch_from=10)
    assert pair.llamacpp_up_to == 6
    fast.load = 9
    assert pair.rebalance() == []
    fast.load = 10
    assert len(pair.rebalance()) == 10 and pair.regime == "torch" and crowd.load == 10
    crowd.load = 7
    assert pair.rebalance() == [] and pair.regime == "torch"
    crowd.load = 6
    assert len(pair.rebalance()) == 6 and pair.regime == "llama.cpp" and pair.moves == 2


def test_a_line_through_two_measured_steps():
    s = StepTime.through([(1, 0.012), (12, 0.067)])
    assert s.per_seq == pytest.approx(0.005) and s.fixed == pytest.approx(0.007)
    assert s.tok_s(12) == pytest.approx(12 / 0.067)
    assert StepTime.through([(1, 0.05), (12, 0.04)]).per_seq == 0       # noise never makes a step cheaper with load


def test_probing_a_real_engine_times_its_steps_and_leaves_it_empty(tmp_path):
    """The probe runs real sequences through a (tiny) engine and cancels them: nothing stays behind."""
    from llmos.drivers.engine import Engine
    from llmos.drivers.loader import load
    from llmos.kernel import registry
    from llmos.userland.testing import make_tiny_llama

    engine = Engine(load(registry.resolve(make_tiny_llama(tmp_path / "llama"))), kv_budget_bytes=1 << 22)
    free = engine.blocks.num_free_blocks
    step = probe(engine, sizes=(1, 4), steps=2)
    assert step.fixed + step.per_seq > 0 and step.per_seq >= 0
    assert not engine.has_work() and engine.load == 0
    assert engine.blocks.num_free_blocks == free          # cancelled: no block held (cached ones are free)


def test_the_operator_may_pin_the_crowd_or_turn_it_off(monkeypatch):
    fast, crowd = Engines(), Engines()
    monkeypatch.setenv("LLMOS_CPU_CROWD_FROM", "12")
    assert EnginePair.for_this_machine(fast, crowd, 64).torch_from == 12        # no probe: nothing measured
    monkeypatch.setenv("LLMOS_CPU_CROWD_FROM", "never")
    assert EnginePair.for_this_machine(fast, crowd, 64).torch_from is None
    for bad in ("1", "lots", "-3"):
        monkeypatch.setenv("LLMOS_CPU_CROWD_FROM", bad)
        with pytest.raises(ValueError, match="LLMOS_CPU_CROWD_FROM"):
            EnginePair.for_this_machine(fast, crowd, 64)


def test_a_copy_as_fast_for_one_stream_and_faster_for_a_crowd_is_kept():
    assert pick_weights({"file": AVX2_Q4_1, "q8_0": AVX2_Q8_0}) == "q8_0"
    slow_alone = StepTime.through([(1, 0.0086 / 0.8), (12, 0.0384)])      # a fifth slower alone, as fast crowded
    assert pick_weights({"file": AVX2_Q4_1, "q8_0": slow_alone}) == "file"   # a crowd's speed is not bought with a lone user's
    within = StepTime.through([(1, 0.0086 / 0.9), (12, 0.0384)])
    assert pick_weights({"file": AVX2_Q4_1, "q8_0": within}) == "q8_0"      # 10% is within a shared machine's noise
    no_better = StepTime.through([(1, 0.0086), (12, 0.0600)])        # as fast alone, slower crowded
    assert pick_weights({"file": AVX2_Q4_1, "q8_0": no_better}) == "file"
    assert pick_weights({"file": AVX2_Q4_1}) == "file"
