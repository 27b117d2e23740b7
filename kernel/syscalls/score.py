"""The score syscall: how likely a generate model (or a LoRA adapter over one) finds each of a few
texts, as the summed log-loss.

It is what perplexity and likelihood-ranked evaluation need, measured on the model users get.
The driver runs it as one no-grad forward between engine steps (as an embed), so it is a request
of the caller's like an embed: counted against its limits, cancellable, reaped with it, ended
with EIO if its driver dies. The text's length in tokens against the model's context is checked
by the driver, the only one holding the tokenizer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmos.specs import SYSCALLS, channel

from ..errors import einval
from .inference import caller_served, model_and_adapter

if TYPE_CHECKING:
    from ..process import CallContext
    from ..kernel import Kernel

MAX_SCORE_TEXTS = SYSCALLS["score"].args["texts"].max_items
MAX_SCORE_CHARS = 262144      # all texts of one call together: about the context of a few large models


async def sys_score(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    texts = args["texts"]
    if isinstance(texts, str):
        texts = [texts]
    if not texts or len(texts) > MAX_SCORE_TEXTS or not all(isinstance(t, str) for t in texts):
        raise einval(f"score: 'texts' must be a string or a list of 1 to {MAX_SCORE_TEXTS} strings")
    chars = sum(len(t) for t in texts)
    if chars > MAX_SCORE_CHARS:
        raise einval(f"score: the texts hold {chars} characters, more than {MAX_SCORE_CHARS} per call; "
                     f"send them in several calls")
    share = caller_served(k, ctx, args["for_call"], "score")           # the service host scoring for a caller
    entry, adapter = await model_and_adapter(k, ctx, args["model"], "generate")
    req = k.requests.new(ctx, "score", entry, {"adapter": adapter}, share=share)   # holds its adapter against eviction
    k.requests.running(req)      # beside the batch window, as an embed: one call, not a batch slot
    k.drivers.send(req.device, channel.Score(req.rid, req.model, adapter, texts))
    return await req.future


HANDLERS = {"score": sys_score}
