"""Sampling parameters a caller leaves out come from the model's generation_config, else from
documented defaults that keep a small model on topic; a repetition penalty a model asks for applies."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import GenerationConfig

from llmos.drivers.logits import shape
from llmos.drivers.sampling import SamplingDefaults, sample_rows
from llmos.drivers.sequence import GenRequest, Sequence
from llmos.specs import channel
from llmos.specs.abi import SYSCALLS
from llmos.kernel.registry import resolve


def test_infer_arguments_left_out_are_nil_for_the_model_to_fill():
    args = SYSCALLS["infer"].validate({"prompt": "hi"})
    assert (args["temperature"], args["top_p"], args["top_k"]) == (None, None, None)


def test_a_model_without_sampling_defaults_gets_ours():
    assert SamplingDefaults.of(GenerationConfig()) == SamplingDefaults(0.6, 0.9, 50, 1.0)
    assert SamplingDefaults.of(None) == SamplingDefaults(0.6, 0.9, 50, 1.0)


def test_a_model_generation_config_sets_the_defaults_it_names():
    config = GenerationConfig(do_sample=True, temperature=0.3, top_p=0.8, repetition_penalty=1.2)
    assert SamplingDefaults.of(config) == SamplingDefaults(0.3, 0.8, 50, 1.2)


def test_a_model_that_does_not_sample_defaults_to_greedy():
    assert SamplingDefaults.of(GenerationConfig(do_sample=False)).temperature == 0.0


def test_repetition_penalty_makes_tokens_already_seen_less_likely():
    logits = torch.tensor([[2.0, 1.0, -1.0, 1.5], [2.0, 1.0, -1.0, 1.5]])
    seqs = [Sequence(GenRequest(1, [0, 2], 8, 0.0, 1.0, 0, [], None, repetition_penalty=2.0), 0, 8),
            Sequence(GenRequest(2, [0, 2], 8, 0.0, 1.0, 0, [], None), 0, 8)]
    seqs[0].tokens.append(0)
    out = shape(logits, seqs, eos_ids=[])
    assert out[0].tolist() == [1.0, 1.0, -2.0, 1.5]     # seen: 2.0 / 2 and -1.0 * 2; the rest as they were
    assert out[0].argmax() == 3
    assert torch.equal(out[1], logits[1])               # penalty 1: the row is untouched


def test_a_token_whose_logit_is_minus_infinity_is_never_sampled():
    """Seed 32 at position 65 draws the largest noise value for token 366 of 384: with 24 bits of
    noise it rounded to 1.0, whose Gumbel noise is +inf, and 366 won over the one token allowed."""
    logits = torch.full((1, 384), float("-inf"))
    logits[0, 2] = -0.3
    assert sample_rows(logits, [1.0], [1.0], [0], [32], [65]) == [2]


@pytest.fixture
def tiny_with_generation_config(tiny_llama, tmp_path):
    """The tiny model, copied, with a generation_config.json that names its own sampling defaults."""
    folder = shutil.copytree(tiny_llama, tmp_path / "tiny-sampling")
    (folder / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.25, "top_k": 7, "repetition_penalty": 1.3}))
    return str(folder)


def test_the_driver_fills_what_the_caller_left_out_from_the_model(tiny_with_generation_config):
    from llmos.drivers.torch_driver import TorchDriver

    driver = TorchDriver("cpu", "float32")
    spec = resolve(tiny_with_generation_config)
    driver.load(channel.Load(spec.name, spec.to_wire(), 1 << 20))
    submit = dict(model=spec.name, prompt="hello", messages=None, max_tokens=2, stop=[], seed=1)
    assert driver.submit(channel.Submit(rid=1, temperature=None, top_p=None, top_k=None, **submit)) is None
    assert driver.submit(channel.Submit(rid=2, temperature=0.0, top_p=0.5, top_k=3, **submit)) is None
    engine = driver.engines[spec.name]
    left_out, given = engine.scheduler.find(1).req, engine.scheduler.find(2).req
    assert (left_out.temperature, left_out.top_p, left_out.top_k, left_out.repetition_penalty) == (0.25, 0.9, 7, 1.3)
    assert (given.temperature, given.top_p, given.top_k) == (0.0, 0.5, 3)


def test_a_greedy_request_with_a_repetition_penalty_matches_transformers(tiny_llama):
    from llmos.drivers.engine import Engine, GenRequest
    from llmos.drivers.loader import load

    lm = load(resolve(tiny_llama), "cpu", "float32")
    prompt = lm.tokenizer("The quick brown fox jumps over the lazy dog.").input_ids
    engine = Engine(lm, kv_budget_bytes=8 << 20)
    engine.add(GenRequest(1, prompt, 16, 0.0, 1.0, 0, [], None, ignore_eos=True, repetition_penalty=1.5))
    tokens = []
    while engine.has_work():
        tokens += [t for ev in engine.step() for t in ev.token_ids]
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        expected = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16,
                                     min_new_tokens=16, repetition_penalty=1.5,
                                     pad_token_id=lm.tokenizer.pad_token_id)[0, len(prompt):].tolist()
    assert tokens == expected
