"""int8 weight-only quantization (drivers/quant.py), specified on the tiny random-weight model: its
size, its agreement with the float model through the engine and transformers' own forward, and
load_model's quant through a real kernel.

Agreement is asserted on a fixed set of next-token predictions: the weights come from seed 0 and
the prompts are fixed, so each run computes the same numbers and the rates below are not
chance. They sit well under what was measured (see each test) so that a change of kernel or
thread count, which moves logits in the last bits, cannot flip the verdict; a broken scale, a
transposed matrix or a lost bias drops agreement to chance (about 1 in 380).
"""

from __future__ import annotations

import pytest
import torch

from harness import raised
from llmos.drivers.engine import Engine, GenRequest
from llmos.drivers.hf_runner import HFRunner
from llmos.drivers.loader import LoadedModel, load
from llmos.drivers.quant import Int8Embedding, Int8Linear, UnsupportedModel, quantize
from llmos.drivers.sequence import Chunk
from llmos.kernel import registry
from llmos.userland.testing import CORPUS, make_tiny_bert, make_tiny_llama

KV_BYTES = 1 << 22   # holds thousands of tiny-model tokens


@pytest.fixture(scope="module")
def tiny_copy(tmp_path_factory) -> str:
    """A second copy of the tiny model at a path of its own, so the shared kernel can load it int8
    while its default model (the tiny_llama path) stays unquantized."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-int8"))


@pytest.fixture(scope="module")
def fp32(tiny_llama) -> LoadedModel:
    return load(registry.resolve(tiny_llama), "cpu", "float32")


@pytest.fixture(scope="module")
def int8(tiny_llama) -> LoadedModel:
    return load(registry.resolve(tiny_llama, quant="int8"), "cpu", "float32")


def prompts(lm: LoadedModel, n: int = 64) -> list[list[int]]:
    """n fixed prompts: windows of 3 to 40 tokens cut from the tiny model's own corpus."""
    ids = lm.tokenizer(CORPUS).input_ids
    return [ids[(7 * i) % (len(ids) - 40):][:3 + (i * 5) % 38] for i in range(n)]


def next_tokens(engine: Engine, prompt_ids: list[list[int]]) -> list[int]:
    """The greedy next token of each prompt, all in one batch through the engine."""
    for rid, ids in enumerate(prompt_ids):
        engine.add(GenRequest(rid, list(ids), 1, 0.0, 1.0, 0, [], None, ignore_eos=True))
    got: dict[int, int] = {}
    while engine.has_work():
        for ev in engine.step():
            if ev.token_ids:
                got[ev.rid] = ev.token_ids[0]
    return [got[rid] for rid in range(len(prompt_ids))]


def agreement(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a)


def test_every_weight_matrix_becomes_int8_and_tied_embeddings_stay_one_matrix(int8):
    modules = list(int8.model.modules())
    assert not [m for m in modules if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    assert sum(isinstance(m, Int8Linear) for m in modules) == 2 * 7 + 1     # 2 layers of 7 projections, lm_head
    assert int8.model.lm_head.weight_int8 is int8.model.model.embed_tokens.weight_int8


def test_int8_weights_take_at_least_40_percent_less_memory(tiny_llama, fp32, int8):
    """LoadedModel.bytes is what the driver reports to the kernel; measured: 73% less than fp32."""
    assert int8.bytes <= 0.6 * fp32.bytes
    on_disk = registry.estimate_bytes(registry.resolve(tiny_llama, quant="int8"), 4)
    assert abs(on_disk - int8.bytes) <= 1024   # the kernel's admission estimate is the real size


def test_the_engine_on_int8_predicts_mostly_the_same_next_tokens_as_on_fp32(fp32, int8):
    """64 prompts in one batch through the paged runner; measured: 63 of 64 agree."""
    batch = prompts(fp32)
    assert agreement(next_tokens(Engine(fp32, KV_BYTES), batch), next_tokens(Engine(int8, KV_BYTES), batch)) >= 0.9


def test_the_hf_fallback_runner_on_int8_agrees_with_fp32_too(fp32, int8):
    """Transformers' own forward (HFRunner, for models the paged runner does not take) calls the
    replaced modules as well; measured: 63 of 64 agree."""
    chunks = [Chunk(i, ids, 0, [], True) for i, ids in enumerate(prompts(fp32))]
    want, got = (HFRunner(lm).forward(chunks).argmax(-1).tolist() for lm in (fp32, int8))
    assert agreement(want, got) >= 0.9


def test_int8_logits_stay_close_to_fp32(fp32, int8):
    """Relative error of the logits over a batch; measured: 1.7% (per-row int8 steps are 1/254 of a row's range)."""
    ids = torch.tensor([p[:3] for p in prompts(fp32, 16)])
    with torch.inference_mode():
        want, got = fp32.model(ids).logits, int8.model(ids).logits
    assert ((got - want).norm() / want.norm()).item() < 0.06


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_matches_its_dequantized_matrix_for_one_row_and_many(dtype):
    """Decode (few rows, the packed kernel where it pays) and prefill (many rows, dequantized) compute the same."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True)
    with torch.no_grad():
        linear.weight *= torch.linspace(0.1, 2.0, 48)[:, None]    # rows of unlike ranges, unlike scales
    linear = linear.to(dtype)
    q = Int8Linear.of(linear, torch.device("cpu"))
    dequantized = q.weight_int8.float() * q.scales.float()[:, None]
    for rows in (1, 100):
        x = torch.randn(rows, 64, dtype=dtype)
        want = x.float() @ dequantized.T + linear.bias.float()
        assert torch.allclose(q(x).float(), want, rtol=0.02, atol=0.05)


def test_a_model_that_is_not_llama_shaped_is_refused_before_anything_changes(tiny_llama):
    other = load(registry.resolve(tiny_llama), "cpu", "float32").model
    other.config.model_type = "gpt2"
    with pytest.raises(UnsupportedModel, match="Llama-family"):
        quantize(other, "cpu")
    assert not [m for m in other.modules() if isinstance(m, (Int8Linear, Int8Embedding))]


def test_a_configs_quant_flows_through_resolve_and_a_load_may_override_it(tiny_llama):
    configured = {"tiny": {"path": tiny_llama, "quant": "int8"}}
    assert registry.resolve("tiny", configured).quant == "int8"
    assert registry.resolve("tiny", configured, quant="none").quant is None


def test_a_config_naming_an_unknown_quant_is_refused_naming_the_choices(tiny_llama):
    with pytest.raises(registry.UnsupportedQuant, match="none, int8"):
        registry.resolve("tiny", {"tiny": {"path": tiny_llama, "quant": "fp4"}})


def test_quant_on_an_architecture_that_is_not_llama_family_is_refused_from_its_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(registry.UnsupportedQuant, match="'gpt2' model"):
        registry.resolve(str(tmp_path), quant="int8")
    assert registry.resolve(str(tmp_path)).quant is None


# --- through the kernel ------------------------------------------------------------------------


def loaded(c, name: str) -> dict:
    return next(m for m in c.models()["loaded"] if m["name"] == name)


def cpu_row(c) -> dict:
    return next(d for d in c.devices() if d["name"] == "cpu")


def test_load_model_int8_serves_and_is_charged_its_smaller_size(kernel, tiny_copy):
    with kernel.client("quant") as c:
        before = cpu_row(c)["models_bytes"]
        try:
            r = c.load_model(tiny_copy, quant="int8")
            assert r["quant"] == "int8"
            assert c.infer(prompt="The quick brown fox", model=tiny_copy, max_tokens=4, temperature=0)["text"]
            q, plain = loaded(c, tiny_copy), loaded(c, kernel.model)
            assert q["quant"] == "int8" and plain["quant"] == "none"
            assert q["bytes"] == r["bytes"] < plain["bytes"]      # the same KV budget, smaller weights
            assert cpu_row(c)["models_bytes"] - before == q["bytes"]
        finally:
            c.unload_model(tiny_copy, evict=True)


def test_an_unknown_quant_is_einval_naming_the_choices(kernel, tiny_copy):
    with kernel.client("quant") as c:
        error = raised(c.load_model, tiny_copy, quant="int4")
    assert error.errno == "EINVAL" and "none, int8" in error.message


def test_quant_on_an_embedding_model_is_einval_with_nothing_loaded_or_charged(kernel, tmp_path):
    bert = make_tiny_bert(tmp_path / "bert")      # a path of its own: the shared kernel may hold tiny_bert already
    with kernel.client("quant") as c:
        before = cpu_row(c)["models_bytes"]
        error = raised(c.load_model, bert, quant="int8")
        assert bert not in [m["name"] for m in c.models()["loaded"]]
        assert cpu_row(c)["models_bytes"] == before
    assert error.errno == "EINVAL" and "embedding model" in error.message


def test_a_model_loaded_unquantized_asked_for_int8_is_ebusy_saying_how_it_is_loaded(kernel):
    with kernel.client("quant") as c:
        error = raised(c.load_model, kernel.model, quant="int8")
        assert loaded(c, kernel.model)["quant"] == "none"
    assert error.errno == "EBUSY" and "loaded with quant none" in error.message


def test_a_model_loaded_int8_is_shared_by_a_load_without_quant_and_ebusy_for_quant_none(kernel, tiny_copy):
    with kernel.client("quant") as c:
        try:
            c.load_model(tiny_copy, quant="int8")
            again = c.load_model(tiny_copy)
            assert again["already_loaded"] and again["quant"] == "int8"
            error = raised(c.load_model, tiny_copy, quant="none")
        finally:
            c.unload_model(tiny_copy, evict=True)
    assert error.errno == "EBUSY" and "loaded with quant int8" in error.message
