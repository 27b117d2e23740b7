"""Evaluation through the kernel: labeled sets run through `infer` and `score`, so a figure measures
what users of the model get (its template, its sampling, its adapter), not a copy of it in a script.

Data are JSONL files, one example a line (blank lines skipped):

- classify: `{"text": str, "label": str}`, the label set given by a header line `{"labels": [str, ...]}`
  (the first line) or by the caller; the model is asked, greedy, to answer with one label
  (`classify_messages`: train on the same messages so a fine-tune learns what it is asked here), and
  its answer counts as the first label word it contains.
- qa: `{"question": str, "answer": str}` or `{"answers": [str, ...]}`, optional `"context": str`;
  correct when the normalized answer contains a normalized gold answer (lower case, no punctuation,
  no articles, single spaces).
- perplexity: `{"text": str}`: exp(sum of the texts' nll / their tokens), from `score`.

A file with bad lines is refused whole, every bad line named (DataError), before any call.
"""

from __future__ import annotations

import json
import math
import re
import string
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

TASKS = ("classify", "qa", "perplexity")
Z95 = 1.959963984540054             # the standard normal's 97.5% quantile
CLASSIFY_MAX_TOKENS, QA_MAX_TOKENS = 16, 48
SCORE_BATCH, SCORE_CHARS = 16, 131072   # texts and characters per score call (the syscall takes 64 and 262144)
NO_LABEL = "(none)"                 # what a classify answer naming no label counts as


class DataError(ValueError):
    """An evaluation file that cannot be used; `lines` holds (line number, why) for each bad line."""

    def __init__(self, message: str, lines: list[tuple[int, str]] | None = None):
        self.lines = lines or []
        shown = "; ".join(f"line {n}: {why}" for n, why in self.lines[:10])
        more = f" (and {len(self.lines) - 10} more)" if len(self.lines) > 10 else ""
        super().__init__(f"{message}: {shown}{more}" if self.lines else message)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: unlike p ± z·sqrt(p(1-p)/n) it stays within [0, 1]
    and is not empty at 0 or n successes, which small evaluation sets often give."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


# -- data -------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    task: str
    examples: list[dict]
    labels: list[str] = field(default_factory=list)    # classify only


def parse_data(task: str, text: str, labels: list[str] | None = None) -> Dataset:
    """The examples of a JSONL file for `task`; DataError naming every bad line."""
    rows, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            bad.append((number, f"not JSON ({exc.msg})"))
            continue
        if not isinstance(row, dict):
            bad.append((number, "not a JSON object"))
            continue
        if task == "classify" and not rows and not bad and "labels" in row and "text" not in row:
            if labels is None:     # the caller's label set wins over the file's header
                labels = _checked_labels(row["labels"], f"line {number}: 'labels'")
            continue
        why = _check_row(task, row)
        if why:
            bad.append((number, why))
        else:
            rows.append((number, row))
    if task == "classify":
        if labels is not None:
            labels = _checked_labels(labels, "the label set")
        if labels is None:
            raise DataError("no label set: give a first line {\"labels\": [...]} or --labels")
        bad += [(n, f"label {r['label']!r} is not one of {', '.join(labels)}") for n, r in rows
                if r["label"] not in labels]
    if bad:
        raise DataError("bad lines", sorted(bad))
    if not rows:
        raise DataError("no examples")
    return Dataset(task, [r for _, r in rows], list(labels or []))


def _checked_labels(labels, what: str) -> list[str]:
    if not isinstance(labels, list) or len(labels) < 2 or not all(_is_text(x) for x in labels) \
            or len(set(labels)) < len(labels):
        raise DataError(f"{what} must list at least two different non-empty strings")
    return labels


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _check_row(task: str, row: dict) -> str | None:
    """Why a line is not an example of `task`, or None."""
    if task == "classify":
        return None if _is_text(row.get("text")) and _is_text(row.get("label")) else \
            "a classify line needs non-empty strings 'text' and 'label'"
    if task == "qa":
        answers = row.get("answers", [row.get("answer")])
        if not _is_text(row.get("question")):
            return "a qa line needs a non-empty string 'question'"
        if not isinstance(answers, list) or not answers or not all(_is_text(a) for a in answers):
            return "a qa line needs 'answer' (a non-empty string) or 'answers' (a list of them)"
        if "context" in row and not isinstance(row["context"], str):
            return "'context' must be a string"
        return None
    return None if _is_text(row.get("text")) else "a perplexity line needs a non-empty string 'text'"


# -- prompts and answers ----------------------------------------------------------------------------

def classify_messages(labels: list[str], text: str) -> list[dict]:
    """The chat a classify example is asked as (a training set for this task uses the same)."""
    return [{"role": "system", "content": "Classify the text. Answer with exactly one of these labels and "
                                          f"nothing else: {', '.join(labels)}."},
            {"role": "user", "content": text}]


def qa_messages(question: str, context: str | None = None) -> list[dict]:
    system = "Answer the question with a short phrase, no explanation."
    if context:
        system += f"\n\nContext:\n{context}"
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def first_label(answer: str, labels: list[str]) -> str:
    """The label the answer names first (whole words, any case); NO_LABEL if it names none."""
    found = []
    for label in labels:
        m = re.search(rf"(?<!\w){re.escape(label)}(?!\w)", answer, re.IGNORECASE)
        if m:
            found.append((m.start(), -len(label), label))
    return min(found)[2] if found else NO_LABEL


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no a/an/the, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def qa_correct(answer: str, golds: list[str]) -> bool:
    said = f" {normalize_answer(answer)} "
    return any(f" {normalize_answer(g)} " in said for g in golds if normalize_answer(g))


# -- running ----------------------------------------------------------------------------------------

def evaluate(client, model: str | None, data: Dataset, concurrency: int = 8) -> dict:
    """Run `data` through the kernel with `client` (infer and score); the result as `llmos eval --json` prints it."""
    if data.task == "perplexity":
        return _perplexity(client, model, data)
    ask = _classify_one if data.task == "classify" else _qa_one
    with ThreadPoolExecutor(max(1, concurrency)) as pool:      # the kernel batches them on the device
        answers = list(pool.map(lambda ex: ask(client, model, data, ex), data.examples))
    outcomes = [(ok, said) for ok, said, _ in answers]
    n, correct = len(outcomes), sum(ok for ok, _ in outcomes)
    low, high = wilson_interval(correct, n)
    result = {"model": model or answers[0][2], "task": data.task, "n": n, "correct": correct, "accuracy": correct / n,
              "interval95": [low, high]}
    if data.task == "classify":
        per_label = {label: {"n": 0, "correct": 0, "predicted": 0} for label in data.labels}
        unmatched = 0
        for ex, (ok, predicted) in zip(data.examples, outcomes):
            per_label[ex["label"]]["n"] += 1
            per_label[ex["label"]]["correct"] += ok
            if predicted in per_label:
                per_label[predicted]["predicted"] += 1
            else:
                unmatched += 1
        result.update(labels=per_label, unmatched=unmatched)
    return result


def _classify_one(client, model, data: Dataset, ex: dict) -> tuple[bool, str, str]:
    """(right?, the label it named, the model that answered: the base's name for an adapter)."""
    r = client.infer(messages=classify_messages(data.labels, ex["text"]), model=model, temperature=0.0,
                     max_tokens=CLASSIFY_MAX_TOKENS)
    predicted = first_label(r["text"], data.labels)
    return predicted == ex["label"], predicted, r["model"]


def _qa_one(client, model, data: Dataset, ex: dict) -> tuple[bool, str, str]:
    r = client.infer(messages=qa_messages(ex["question"], ex.get("context")), model=model, temperature=0.0,
                     max_tokens=QA_MAX_TOKENS)
    return qa_correct(r["text"], ex.get("answers", [ex.get("answer")])), r["text"], r["model"]


def score_batches(texts: list[str]):
    """The texts in runs that one score call takes (SCORE_BATCH texts, SCORE_CHARS characters; a longer
    text goes alone, and the kernel says if it is too long for the model)."""
    run, chars = [], 0
    for text in texts:
        if run and (len(run) == SCORE_BATCH or chars + len(text) > SCORE_CHARS):
            yield run
            run, chars = [], 0
        run.append(text)
        chars += len(text)
    if run:
        yield run


def _perplexity(client, model, data: Dataset) -> dict:
    tokens, nll, used = 0, 0.0, model
    for texts in score_batches([ex["text"] for ex in data.examples]):
        r = client.score(texts, model=model)
        tokens, nll, used = tokens + sum(r["tokens"]), nll + sum(r["nll"]), model or r["model"]
    return {"model": used, "task": "perplexity", "n": len(data.examples), "tokens": tokens, "nll": nll,
            "perplexity": math.exp(nll / tokens) if tokens else None}
