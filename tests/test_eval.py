"""Evaluation through the kernel: the `score` syscall and `llmos eval` (issue 12 item 3).

score runs on a float32 kernel of this module's own: in bf16 the same text batched with others
(padded) and alone differ by more than the 1e-3 the comparison with transformers asks. Its config
names the tiny model `tiny`, and its state dir holds the operator's LoRA adapter `tiny:a`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from llmos.userland.cli.exits import EXIT_FAILED
from llmos.userland.evaluation import first_label, qa_correct, wilson_interval
from llmos.userland.testing import KernelProcess

from adapter_files import make_adapter
from harness import errno_of, raised

pytestmark = pytest.mark.timeout(600)    # an eval run through the CLI may take its 300 s (kernel.cli timeout)
TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "Kernels schedule requests fairly across processes, and drivers batch them on each device.",
         "hi",
         "A"]


@pytest.fixture(scope="module")
def adapter_folder(tiny_llama, tmp_path_factory):
    return make_adapter(tiny_llama, tmp_path_factory.mktemp("eval-state"), "a", seed=7)


@pytest.fixture(scope="module")
def f32_kernel(tmp_path_factory, tiny_llama, adapter_folder):
    workdir = tmp_path_factory.mktemp("eval-kernel")
    (workdir / "config.toml").write_text(f'[models.tiny]\npath = "{tiny_llama}"\n')
    k = KernelProcess(workdir, model="tiny", state_dir=adapter_folder.parents[3],
                      extra=["--config", str(workdir / "config.toml"), "--dtype", "float32"],
                      env={"LLMOS_NO_SERVICES": "1"}).start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def client(f32_kernel):
    with f32_kernel.client("test-eval") as c:
        yield c


def transformers_nll(model_path: str, text: str, adapter: Path | None = None) -> tuple[int, float]:
    """(tokens after the first, their summed -log p) from transformers' own forward on the text alone
    (with an adapter: peft's model with the adapter merged into the base's weights)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    return ids.shape[1] - 1, float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))


# -- score -------------------------------------------------------------------------------------------

def test_score_matches_a_transformers_forward_on_each_text_alone(client, tiny_llama):
    r = client.score(TEXTS)
    assert r["model"] == "tiny"
    for text, tokens, nll in zip(TEXTS, r["tokens"], r["nll"]):
        want_tokens, want_nll = transformers_nll(tiny_llama, text)
        assert tokens == want_tokens, text
        assert nll == pytest.approx(want_nll, abs=1e-3), text


def test_score_through_an_adapter_matches_peft_merged_model(client, tiny_llama, adapter_folder):
    r = client.score(TEXTS, model="tiny:a")
    base = client.score(TEXTS)
    for text, tokens, nll, base_nll in zip(TEXTS, r["tokens"], r["nll"], base["nll"]):
        want_tokens, want_nll = transformers_nll(tiny_llama, text, adapter_folder)
        assert tokens == want_tokens, text
        assert nll == pytest.approx(want_nll, abs=1e-3), text
        assert tokens == 0 or abs(nll - base_nll) > 1e-3, "the adapter changed nothing: the test cannot tell"


def test_score_of_an_adapter_nobody_made_is_enoent(client):
    assert errno_of(client.score, ["hello"], model="tiny:nobody") == "ENOENT"


def test_score_takes_one_text_as_a_string(client):
    r = client.score(TEXTS[1])
    assert len(r["tokens"]) == len(r["nll"]) == 1 and r["tokens"][0] > 0 and r["nll"][0] > 0


def test_score_of_a_single_token_text_is_zero_tokens_and_zero_nll(client):
    r = client.score(["A"])
    assert r["tokens"] == [0] and r["nll"] == [0.0]


def test_score_of_a_text_longer_than_the_models_context_is_einval(client):
    error = raised(client.score, ["hello world " * 600])      # the tiny model's context is 512 tokens
    assert error.errno == "EINVAL" and "context" in error.message


@pytest.mark.parametrize("texts", [[], ["a"] * 65, ["x" * 131073, "y" * 131072], [1, "a"]],
                         ids=["none", "too-many", "too-many-characters", "not-strings"])
def test_score_out_of_bounds_is_einval(client, texts):
    assert errno_of(client.score, texts) == "EINVAL"


# -- llmos eval --------------------------------------------------------------------------------------

def write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_eval(kernel: KernelProcess, *args: str):
    return kernel.cli("eval", "--task", *args, timeout=300)


def test_eval_classify_prints_accuracy_its_interval_and_each_label(f32_kernel, tmp_path):
    data = write_jsonl(tmp_path / "c.jsonl", [{"labels": ["red", "blue"]}, {"text": "the sky", "label": "blue"},
                                              {"text": "a fire truck", "label": "red"},
                                              {"text": "the sea", "label": "blue"}])
    r = run_eval(f32_kernel, "classify", "--data", data)
    assert r.returncode == 0, r.stderr
    assert "n=3" in r.stdout and "95% interval" in r.stdout and "(Wilson)" in r.stdout
    assert [line.split()[0] for line in r.stdout.splitlines() if line.split()[:1] in (["red"], ["blue"])] == \
        ["red", "blue"]


def test_eval_classify_json_counts_agree(f32_kernel, tmp_path):
    data = write_jsonl(tmp_path / "c.jsonl", [{"text": f"text {i}", "label": "yes" if i % 2 else "no"}
                                              for i in range(6)])
    r = run_eval(f32_kernel, "classify", "--data", data, "--labels", "yes,no", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 6 and out["labels"]["yes"]["n"] == out["labels"]["no"]["n"] == 3
    assert out["correct"] == sum(c["correct"] for c in out["labels"].values())
    predicted = sum(c["predicted"] for c in out["labels"].values()) + out["unmatched"]
    assert predicted == 6
    low, high = out["interval95"]
    assert low <= out["accuracy"] <= high


def test_eval_qa_prints_accuracy(f32_kernel, tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "What colour is the sky?", "answers": ["blue", "azure"]},
                                              {"question": "Who wrote it?", "answer": "Ada", "context": "Ada wrote it."}])
    r = run_eval(f32_kernel, "qa", "--data", data, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["task"] == "qa" and out["n"] == 2 and 0 <= out["correct"] <= 2


def test_eval_perplexity_is_exp_of_the_mean_nll_score_gives(f32_kernel, client, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in TEXTS])
    r = run_eval(f32_kernel, "perplexity", "--data", data)
    assert r.returncode == 0, r.stderr
    scored = client.score(TEXTS)
    want = math.exp(sum(scored["nll"]) / sum(scored["tokens"]))
    assert f"perplexity {want:.3f} over {sum(scored['tokens'])} tokens" in r.stdout


def test_eval_save_prints_the_adapters_result_and_says_nothing_was_saved(f32_kernel, client, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in TEXTS])
    r = run_eval(f32_kernel, "perplexity", "--data", data, "--model", "tiny:a", "--save")
    assert r.returncode == 0, r.stderr
    scored = client.score(TEXTS, model="tiny:a")
    out = json.loads(r.stdout)
    assert out["model"] == "tiny:a" and out["nll"] == pytest.approx(sum(scored["nll"]), abs=1e-3)
    assert "nothing was saved" in r.stderr


def test_eval_save_of_a_model_that_is_not_an_adapter_is_einval(f32_kernel, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"text": "hello"}])
    r = run_eval(f32_kernel, "perplexity", "--data", data, "--model", "tiny", "--save")
    assert r.returncode == EXIT_FAILED and r.stderr.startswith("llmos eval: EINVAL: --save ")


def test_eval_refuses_a_file_with_bad_lines_naming_each(f32_kernel, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"labels": ["a", "b"]}\n{"text": "ok", "label": "a"}\nnot json\n\n'
                    '{"text": "x", "label": "c"}\n{"label": "a"}\n')
    r = run_eval(f32_kernel, "classify", "--data", str(path))
    assert r.returncode == EXIT_FAILED
    assert r.stderr.startswith(f"llmos eval: EINVAL: {path}: bad lines: line 3: not JSON")
    assert "line 5: label 'c' is not one of a, b" in r.stderr and "line 6: " in r.stderr
    assert r.stdout == ""


# -- the figures' arithmetic -------------------------------------------------------------------------

@pytest.mark.parametrize("successes,n,low,high", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634),
                                                   (10, 10, 0.7225, 1.0), (81, 263, 0.2553, 0.3662)])
def test_wilson_interval_matches_published_values(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_the_first_label_named_wins_whole_words_only():
    labels = ["cat", "dog", "catalog"]
    assert first_label("A dog, not a cat.", labels) == "dog"
    assert first_label("CATALOG entry", labels) == "catalog"
    assert first_label("concatenate", labels) == "(none)"


def test_a_qa_answer_is_right_when_it_contains_a_normalized_gold_answer():
    assert qa_correct("It was The Eiffel Tower!", ["eiffel tower"])
    assert not qa_correct("A tower in Paris", ["Eiffel Tower"])
