"""support: a customer-support agent over a knowledge base, with hand-off to a human.

Each conversation lives in a memory region of the calling program (one JSON entry per
conversation id), so it survives the service host and the kernel restarting. A turn goes:

1. Already handed off? Say a human is coming; the state stays flagged.
2. The customer asks for a person ("agent", "human", "talk to someone"...)? Hand off.
3. Greetings, thanks and goodbyes get templates.
4. Otherwise the question (joined with the previous one when it is a short follow-up such as
   "and for furniture?") goes to the kb service's retrieval; a found answer is quoted with its
   source. Nothing relevant in the knowledge base means the agent cannot help: hand off.
5. An upset customer (classify's sentiment says negative) gets an apology: with the answer when
   the message asks something the knowledge base answers, else with a hand-off. A complaint
   that asks nothing ("This is ridiculous!") is not looked up at all: the nearest fact in the
   knowledge base would be an answer to nothing, and it needs a person.
6. A customer who is angry twice in a row is handed off too, answer or not.

The hand-off is a state in the result (`handoff`, `handoff_reason`) and in the `status` task,
for the program that routes conversations to people. No free generation: replies are
templates around retrieved sentences, which a 135M model cannot get wrong.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
import weakref

import click

from llmos.services import ServiceError, Task, hookimpl
from llmos.userland.cli import connect, fail, typed_lines
from llmos.userland.client import LLMOSError

from . import classify, kb

_HUMAN = re.compile(r"\b(?:human|real person|a person|someone real|agent|representative|operator|manager|supervisor|"
                    r"speak to (?:someone|somebody)|talk to (?:someone|somebody)|call me back)\b", re.I)
_GREETING = re.compile(r"^\s*(?:hi|hello|hey|good (?:morning|afternoon|evening)|hiya)[\s!.,]*$", re.I)
_THANKS = re.compile(r"^\s*(?:(?:ok(?:ay)?|great|perfect|cool|nice)[\s,!.]*)?(?:thanks?(?: you)?(?: so much| a lot)?|"
                     r"cheers|that helps|got it|bye|goodbye)[\s!.]*$", re.I)
_FOLLOW_UP = re.compile(r"^\s*(?:and|what about|how about|also|but|what if|same for|is that|does that|"
                        r"can i also)\b|\b(?:it|that|this|they|them|those)\b", re.I)
# The message asks something: a question mark, or a clause that opens like a question.
_ASKS = re.compile(r"\?|(?:^|[,.;:!]\s*)(?:how|what|when|where|why|which|who|can|could|do|does|did|is|are|will|"
                   r"would|should|may)\b", re.I)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
# One lock per conversation being answered, so two messages to one conversation take turns; keyed by
# the caller's principal (conversation ids are the caller's to choose), and weak, so it holds only the
# conversations in flight.
_LOCKS: "weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock]" = weakref.WeakValueDictionary()

GREETING = "Hello! I'm the support assistant. Ask me anything about orders, delivery, returns or your account."
CLOSING = "You're welcome! Is there anything else I can help you with?"
HANDOFF = "I'm passing you to a human agent now; they can see this conversation and will reply here shortly."
WAITING = "A human agent has this conversation and will reply shortly."
SORRY = "I'm sorry about that."
UPSET_HANDOFF = ("I'm sorry about this, and I want it put right. I'm passing you to a human agent who can look into "
                 "it; they can see this conversation and will reply here shortly.")
CANNOT_HELP = ("I'm sorry, I couldn't find that in our help articles. I'm passing you to a human agent who can help; "
               "they will reply here shortly.")


def _region(ctx) -> str:
    return ctx.region("conversations")


def _check_id(conversation: str) -> None:
    if not _ID.match(conversation):
        raise ServiceError("EINVAL", "support: 'conversation' must be 1-128 letters, digits, '.', '_', ':' or '-'")


async def load_state(ctx, conversation: str) -> dict | None:
    try:
        value = (await ctx.kernel.memread(_region(ctx), conversation))["value"]
    except LLMOSError as exc:
        if exc.errno == "ENOENT":
            return None
        raise
    return json.loads(value)


async def save_state(ctx, conversation: str, state: dict) -> None:
    await ctx.kernel.memwrite(_region(ctx), conversation, json.dumps(state))


def _query(message: str, turns: list[dict]) -> str:
    """The retrieval query: a short follow-up is read together with the customer's previous question."""
    previous = next((t["text"] for t in reversed(turns) if t["role"] == "customer" and t.get("question")), None)
    if previous and len(message.split()) <= 8 and _FOLLOW_UP.search(message):
        return f"{previous} {message}"
    return message


async def chat(ctx, conversation: str, message: str, kb_name: str | None = None) -> dict:
    _check_id(conversation)
    lock = _LOCKS.setdefault((ctx.caller.get("principal", "?"), conversation), asyncio.Lock())
    async with lock:
        state = await load_state(ctx, conversation) or {
            "conversation": conversation, "kb": kb_name, "handoff": False, "handoff_reason": None,
            "created": time.time(), "turns": []}
        kb_name = kb_name or state.get("kb")
        if kb_name is None:
            raise ServiceError("EINVAL", "support.chat: name the knowledge base ('kb') on the first message")
        state["kb"] = kb_name
        turn = {"role": "customer", "text": message, "time": time.time()}
        reply, citations, handoff_reason = None, [], None
        mood = await classify.sentiment_scores(ctx, message)
        turn["sentiment"] = max(mood, key=mood.get)
        if state["handoff"]:
            reply = WAITING
        elif _HUMAN.search(message):
            handoff_reason = "the customer asked for a human"
            reply = HANDOFF
        elif _GREETING.match(message):
            reply = GREETING
        elif _THANKS.match(message):
            reply = CLOSING
        elif turn["sentiment"] == "negative" and not _ASKS.search(message):
            handoff_reason = "the customer is upset"
            reply = UPSET_HANDOFF
        else:
            turn["question"] = True
            query = _query(message, state["turns"])
            found = await kb.answer_question(ctx, kb_name, query, k=2, focus=message if query != message else None)
            if found["found"]:
                source = found["citations"][0]["source"]
                reply = f"{found['answer']} (from {source})"
                citations = found["citations"]
            else:
                handoff_reason = "no answer in the knowledge base"
                reply = CANNOT_HELP
            angry = [t for t in state["turns"] if t["role"] == "customer"][-1:] + [turn]
            if handoff_reason is None and len(angry) == 2 and all(t.get("sentiment") == "negative" for t in angry):
                handoff_reason = "the customer is frustrated"
                reply += " " + HANDOFF
        if turn["sentiment"] == "negative" and not reply.startswith("I'm sorry"):
            reply = f"{SORRY} {reply}"          # an upset customer hears it first, whatever comes next
        if handoff_reason:
            state["handoff"], state["handoff_reason"] = True, handoff_reason
        state["turns"] += [turn, {"role": "agent", "text": reply, "time": time.time(), "citations": citations}]
        await save_state(ctx, conversation, state)
    ctx.emit(reply)
    return {"reply": reply, "text": reply, "conversation": conversation, "handoff": state["handoff"],
            "handoff_reason": state["handoff_reason"], "citations": citations, "turn": len(state["turns"]) // 2}


async def status(ctx, conversation: str, history: bool = False) -> dict:
    _check_id(conversation)
    state = await load_state(ctx, conversation)
    if state is None:
        raise ServiceError("ENOENT", f"support: no conversation '{conversation}'")
    out = {"conversation": conversation, "kb": state["kb"], "handoff": state["handoff"],
           "handoff_reason": state["handoff_reason"], "turns": len(state["turns"]) // 2}
    if history:
        out["history"] = [{"role": t["role"], "text": t["text"]} for t in state["turns"]]
    return out


async def resolve(ctx, conversation: str) -> dict:
    """A human finished: the conversation goes back to the assistant."""
    _check_id(conversation)
    state = await load_state(ctx, conversation)
    if state is None:
        raise ServiceError("ENOENT", f"support: no conversation '{conversation}'")
    state["handoff"], state["handoff_reason"] = False, None
    await save_state(ctx, conversation, state)
    return {"conversation": conversation, "handoff": False}


async def end(ctx, conversation: str) -> dict:
    _check_id(conversation)
    try:
        await ctx.kernel.memdel(_region(ctx), conversation)
    except LLMOSError as exc:
        if exc.errno == "ENOENT":
            raise ServiceError("ENOENT", f"support: no conversation '{conversation}'") from None
        raise
    return {"conversation": conversation, "deleted": True}


_CONV = {"type": "str", "max_len": 128, "doc": "the conversation's id, chosen by the caller"}


async def _chat(ctx, conversation: str, message: str, kb: str | None = None) -> dict:
    return await chat(ctx, conversation, message, kb)


@hookimpl
def register_services(register):
    register("support", {
        "chat": Task(_chat, "One customer message in; the agent's reply out, grounded in the knowledge base, with "
                            "citations, and the hand-off state (a human is needed when the customer asks for one, "
                            "the knowledge base has no answer, the customer complains without asking anything, "
                            "or is frustrated twice in a row).",
                     args={"conversation": _CONV, "message": {"type": "str", "max_len": 16384},
                           "kb": {"type": "str|null", "nullable": True, "max_len": 64,
                                  "doc": "knowledge base (of the kb service, same program) to answer from; "
                                         "needed on the first message"}},
                     stream=True),
        "status": Task(status, "The conversation's hand-off state and turn count (and history if asked).",
                       args={"conversation": _CONV, "history": {"type": "bool", "default": False}}),
        "resolve": Task(resolve, "Hand a conversation back from the human to the assistant.", args={"conversation": _CONV}),
        "end": Task(end, "Forget a conversation.", args={"conversation": _CONV}),
    }, description="A customer-support agent: multi-turn, grounded in a kb, hands off to a human when it cannot help.")


@click.command("support", help="a customer-support chat over a folder of documents")
@click.option("--kb", "folder", required=True, help="folder of .md/.txt documents to answer from (ingested first)")
@click.option("--name", default=None, help="knowledge base name (default: the folder's name)")
@click.option("--conversation", default=None, help="conversation id to continue (default: a new one)")
def support_command(folder: str, name: str | None, conversation: str | None) -> None:
    folder = os.path.abspath(folder)
    if not os.path.exists(folder):
        raise fail("ENOENT", f"{folder}: no such file or folder")
    kb_name = name or "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in os.path.basename(folder))[:64]
    conversation = conversation or uuid.uuid4().hex[:12]
    docs = kb.read_documents(folder)      # read here, with the caller's rights, not the service host's
    if not docs:
        raise fail("ENOENT", f"{folder}: no document to answer from: only UTF-8 text files "
                             f"({', '.join(sorted(kb.TEXT_SUFFIXES))}) of at most {kb.MAX_FILE_BYTES >> 20} MiB "
                             f"are read, and it holds none")
    with connect("llmos-support") as c:
        r = c.svc_call("kb", "ingest_texts", {"kb": kb_name, "docs": docs})
        click.echo(f"knowledge base '{kb_name}': {len(r['documents'])} documents, {r['chunks']} chunks"
                   + (f" ({len(r['skipped'])} files skipped)" if r["skipped"] else ""), err=True)
        click.echo(f"conversation {conversation}: type your question; /quit or Ctrl-D to quit", err=True)
        for line in typed_lines("you> "):
            r = c.svc_call("support", "chat", {"conversation": conversation, "message": line, "kb": kb_name})
            click.echo(f"agent> {r['reply']}")
            if r["handoff"]:
                click.echo(f"[handed off to a human: {r['handoff_reason']}]", err=True)


@hookimpl
def register_commands(register):
    register(support_command)
