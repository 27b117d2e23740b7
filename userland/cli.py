"""The `llmos` command: boot the kernel, look at it, and use its models from a terminal.

Every subcommand except `boot` is an ordinary userland program: it connects to the kernel's
socket as a process and makes syscalls, exactly as any other program would.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from .client import Client, KernelUnavailable, LLMOSError


def _client(args, name: str) -> Client:
    return Client(socket=args.socket, name=name, timeout=None)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    cells = [[title for _, title in columns]] + [[str(r.get(key, "")) for key, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


# -- subcommands ---------------------------------------------------------------------------------

def cmd_boot(args, rest: list[str]) -> int:
    """Exec the kernel: the userland never imports it, it starts it as a program."""
    argv = [sys.executable, "-m", "llmos.kernel"] + (["--socket", args.socket] if args.socket else []) + rest
    os.execv(sys.executable, argv)
    return 0


def cmd_ps(args) -> int:
    with _client(args, "llmos-ps") as c:
        rows = c.ps()
    for r in rows:
        r["age"] = f"{r['age_s']:.1f}s"
        r["reserved"] = _size(r["reserved_bytes"])
    print(_table(rows, [("pid", "PID"), ("name", "NAME"), ("age", "AGE"), ("requests", "REQS"),
                        ("tokens", "TOKENS"), ("reserved", "RESERVED")]))
    return 0


def cmd_devices(args) -> int:
    with _client(args, "llmos-devices") as c:
        rows = c.devices()
    for r in rows:
        for key in ("total_bytes", "used_bytes", "free_bytes", "models_bytes", "reserved_bytes"):
            r[key] = _size(r[key])
    print(_table(rows, [("name", "DEVICE"), ("driver", "DRIVER"), ("total_bytes", "TOTAL"), ("used_bytes", "USED"),
                        ("free_bytes", "FREE"), ("models_bytes", "MODELS"), ("reserved_bytes", "RESERVED"),
                        ("running", "RUNNING"), ("queued", "QUEUED")]))
    return 0


def cmd_models(args) -> int:
    with _client(args, "llmos-models") as c:
        info = c.models()
    loaded = info["loaded"]
    for r in loaded:
        r["size"] = _size(r["bytes"])
    print(_table(loaded, [("name", "MODEL"), ("kind", "KIND"), ("device", "DEVICE"), ("state", "STATE"),
                          ("size", "SIZE"), ("refs", "REFS"), ("in_use", "IN USE"), ("load_s", "LOAD S")]))
    names = {r["name"] for r in loaded}
    others = [a for a in info["available"] if a["name"] not in names]
    if others:
        print("\navailable:")
        print(_table(others, [("name", "MODEL"), ("kind", "KIND"), ("source", "SOURCE")]))
    return 0


def cmd_load(args) -> int:
    with _client(args, "llmos-load") as c:
        t = time.monotonic()
        r = c.load_model(args.model, device=args.device)
    how = "already loaded" if r["already_loaded"] else f"loaded in {r['load_s']:.1f}s"
    print(f"{r['name']} on {r['device']}: {_size(r['bytes'])}, {how} (waited {time.monotonic() - t:.1f}s)")
    return 0


def cmd_unload(args) -> int:
    with _client(args, "llmos-unload") as c:
        r = c.unload_model(args.model, evict=True)
    print(f"{r['name']}: unloaded")
    return 0


def _sampling(args) -> dict:
    return {"model": args.model, "max_tokens": args.max_tokens, "temperature": args.temperature,
            "top_p": args.top_p, "seed": args.seed}


def cmd_run(args) -> int:
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
               [{"role": "user", "content": args.prompt}]
    with _client(args, "llmos-run") as c:
        started = time.monotonic()
        first = None
        stream = c.stream(messages=messages, **_sampling(args))
        for delta in stream:
            if first is None:
                first = time.monotonic()
            print(delta, end="", flush=True)
        print()
        r = stream.result
        elapsed = time.monotonic() - started
        n = r["usage"]["completion_tokens"]
        gen_s = max(1e-9, time.monotonic() - (first or started))
        if not args.quiet:
            print(f"[{r['model']}: {n} tokens in {elapsed:.2f}s, {n / gen_s:.1f} tokens/s after the first, "
                  f"time to first token {(first or started) - started:.2f}s, finish: {r['finish_reason']}]",
                  file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    messages = [{"role": "system", "content": args.system}] if args.system else []
    with _client(args, "llmos-chat") as c:
        print("llmos chat: empty line or Ctrl-D to quit, /reset to start over", file=sys.stderr)
        for line in _typed_lines("> "):
            if line.strip() == "/reset":
                messages = messages[:1] if args.system else []
                continue
            messages.append({"role": "user", "content": line})
            stream = c.stream(messages=messages, **_sampling(args))
            try:
                for delta in stream:
                    print(delta, end="", flush=True)
            except KeyboardInterrupt:
                stream.cancel()
                print(" [cancelled]")
                messages.pop()
                continue
            print()
            messages.append({"role": "assistant", "content": stream.result["text"]})
    return 0


def _typed_lines(prompt: str):
    """Lines the user types, until an empty line or Ctrl-D."""
    while True:
        try:
            line = input(prompt)
        except EOFError:
            print()
            return
        if not line.strip():
            return
        yield line


def cmd_mem(args) -> int:
    with _client(args, args.owner) as c:
        if args.mem_cmd == "put":
            value = sys.stdin.read() if args.value == "-" else args.value
            r = c.memwrite(args.region, args.key, value, embed=args.embed)
            print(f"{r['region']}/{r['key']}: {r['bytes']} bytes, version {r['version']}"
                  + (", embedded" if args.embed else ""))
        elif args.mem_cmd == "get":
            r = c.memread(args.region, args.key)
            value = r["value"]
            if isinstance(value, bytes):
                sys.stdout.buffer.write(value)
            else:
                print(value)
        elif args.mem_cmd == "ls":
            for key in c.memread(args.region, None, args.prefix)["keys"]:
                print(key)
        elif args.mem_cmd == "search":
            for hit in c.memsearch(args.region, args.query, k=args.k)["results"]:
                value = hit["value"] if isinstance(hit["value"], str) else f"<{len(hit['value'])} bytes>"
                print(f"{hit['score']:.3f}  {hit['key']}  {' '.join(value.split())[:100]}")
        elif args.mem_cmd == "rm":
            r = c.memdel(args.region, args.key)
            print(f"deleted {r['deleted']} from {r['region']}")
    return 0


def cmd_sysinfo(args) -> int:
    with _client(args, "llmos-sysinfo") as c:
        print(json.dumps(c.sysinfo(), indent=2))
    return 0


def cmd_kill(args) -> int:
    c = Client(socket=args.socket, name="llmos-kill", caps=["admin"])
    with c:
        c.kill(args.pid)
    print(f"killed {args.pid}")
    return 0


def parse_arg(item: str) -> tuple[str, object]:
    """--arg key=value: the value as JSON when it parses (numbers, true, lists, maps), else as a string."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"llmos svc call: --arg wants key=value, got '{item}'")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def _print_result(result: dict, as_json: bool, streamed: bool) -> None:
    if as_json or not isinstance(result.get("text"), str):
        print(json.dumps(result, indent=2, ensure_ascii=False, default=repr))
    elif not streamed:
        print(result["text"])


def cmd_svc(args) -> int:
    if args.svc_cmd == "reload":
        with Client(socket=args.socket, name="llmos-svc", caps=["admin", "svc"], timeout=None) as c:
            r = c.svc_reload(drain=args.drain)
        print(f"service host restarted (pid {r['os_pid']}) in {r['reload_s']:.2f}s: "
              f"{r['services']} services, {r['failed']} plugins failed (see `llmos svc list`)")
        return 0
    with _client(args, args.as_name or "llmos-svc") as c:
        if args.svc_cmd == "list":
            listing = c.svc_list()
            if args.json:
                print(json.dumps(listing, indent=2))
                return 0
            host = listing["host"]
            print(f"service host: {host['state']}, pid {host['os_pid']}, restarts {host['restarts']}")
            rows = []
            for svc in listing["services"]:
                for t in svc["tasks"]:
                    params = " ".join(f"{n}" if a["required"] else f"[{n}]" for n, a in t["args"].items())
                    rows.append({"task": f"{svc['name']} {t['name']}", "args": params,
                                 "doc": t["description"][:70] + ("..." if len(t["description"]) > 70 else ""),
                                 "plugin": svc["plugin"]})
            print(_table(rows, [("task", "SERVICE TASK"), ("args", "ARGS"), ("plugin", "PLUGIN"), ("doc", "DESCRIPTION")]))
            for f in listing["failed"]:
                print(f"failed: {f['plugin']}: {f['error']}", file=sys.stderr)
            return 0
        task_args = dict(parse_arg(item) for item in args.arg)
        if args.stream:
            stream = c.svc_stream(args.service, args.task, task_args, deadline=args.deadline)
            for delta in stream:
                print(delta, end="", flush=True)
            print()
            _print_result(stream.result, args.json, streamed=True)
        else:
            _print_result(c.svc_call(args.service, args.task, task_args, deadline=args.deadline), args.json, False)
    return 0


def cmd_summarize(args) -> int:
    text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    with _client(args, "llmos-summarize") as c:
        stream = c.svc_stream("summarize", "text", {"text": text, "style": args.style, "sentences": args.sentences,
                                                    "mode": args.mode})
        for delta in stream:
            print(delta, end="", flush=True)
        print()
        r = stream.result
        if r.get("fallback"):
            print("[the model's rewrite strayed from the text; this is the extract]", file=sys.stderr)
    return 0


def cmd_support(args) -> int:
    import uuid

    folder = os.path.abspath(args.kb)
    kb_name = args.name or "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in os.path.basename(folder))[:64]
    conversation = args.conversation or uuid.uuid4().hex[:12]
    with _client(args, "llmos-support") as c:
        r = c.svc_call("kb", "ingest", {"kb": kb_name, "path": folder})
        print(f"knowledge base '{kb_name}': {len(r['documents'])} documents, {r['chunks']} chunks"
              + (f" ({len(r['skipped'])} files skipped)" if r["skipped"] else ""), file=sys.stderr)
        print(f"conversation {conversation}: type your question; empty line or Ctrl-D to quit", file=sys.stderr)
        for line in _typed_lines("you> "):
            r = c.svc_call("support", "chat", {"conversation": conversation, "message": line, "kb": kb_name})
            print(f"agent> {r['reply']}")
            if r["handoff"]:
                print(f"[handed off to a human: {r['handoff_reason']}]", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    """Boot a private kernel on the default model, ask it one question, show ps, shut it down."""
    with tempfile.TemporaryDirectory(prefix="llmos-demo-") as tmp:
        socket = f"ipc://{tmp}/kernel.sock"
        print(f"booting a kernel on {socket} (loading the default model takes ~20 s on a CPU)...", file=sys.stderr)
        kernel = subprocess.Popen([sys.executable, "-m", "llmos.kernel", "--socket", socket, "--state-dir", tmp,
                                   "--device", args.device])
        try:
            c = _wait_for_kernel(socket, kernel)
            with c:
                model = c.info.get("default_model")
                c.load_model(model)
                print(f"\nQ: {args.question}\nA: ", end="", flush=True)
                stream = c.stream(messages=[{"role": "user", "content": args.question}], temperature=0.0,
                                  max_tokens=args.max_tokens)
                for delta in stream:
                    print(delta, end="", flush=True)
                print("\n")
                print(_table([dict(p, age=f"{p['age_s']:.1f}s") for p in c.ps()],
                             [("pid", "PID"), ("name", "NAME"), ("age", "AGE"), ("tokens", "TOKENS")]))
                u = stream.result["usage"]
                print(f"\n{model}: {u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens, "
                      f"finish: {stream.result['finish_reason']}")
        finally:
            kernel.send_signal(signal.SIGTERM)
            kernel.wait(30)
    return 0


def _wait_for_kernel(socket: str, kernel: subprocess.Popen, timeout: float = 120.0) -> Client:
    deadline = time.monotonic() + timeout
    while True:
        if kernel.poll() is not None:
            raise KernelUnavailable(f"the kernel exited with code {kernel.returncode} while booting")
        try:
            return Client(socket=socket, name="llmos-demo", timeout=None)
        except KernelUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# -- argument parsing ----------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmos", description="llmos: an operating system for language models.")
    p.add_argument("--socket", help="kernel socket URL (default: $LLMOS_SOCKET or the per-user ipc socket)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("boot", help="boot the kernel (flags: see `llmos boot --help`)", add_help=False)
    sub.add_parser("ps", help="list processes")
    sub.add_parser("devices", help="list devices and their memory")
    sub.add_parser("models", help="list loaded and available models")
    sub.add_parser("sysinfo", help="kernel facts")
    s = sub.add_parser("load", help="load a model")
    s.add_argument("model")
    s.add_argument("--device", default="auto")
    s = sub.add_parser("unload", help="unload a model nobody else uses")
    s.add_argument("model")
    s = sub.add_parser("kill", help="reap a process (needs the admin capability)")
    s.add_argument("pid", type=int)
    for name, help_ in (("run", "answer one prompt, streamed"), ("chat", "a multi-turn chat")):
        s = sub.add_parser(name, help=help_)
        if name == "run":
            s.add_argument("prompt")
            s.add_argument("-q", "--quiet", action="store_true", help="no stats line")
        s.add_argument("--model", default=None)
        s.add_argument("--system", default=None, help="system prompt")
        s.add_argument("--max-tokens", type=int, default=256)
        s.add_argument("--temperature", type=float, default=0.2)
        s.add_argument("--top-p", type=float, default=0.95)
        s.add_argument("--seed", type=int, default=None)
    s = sub.add_parser("mem", help="memory regions: get, put, search, ls, rm")
    s.add_argument("--owner", default="llmos-cli", help="program name the region belongs to (default: llmos-cli)")
    ms = s.add_subparsers(dest="mem_cmd", required=True)
    m = ms.add_parser("get")
    m.add_argument("region")
    m.add_argument("key")
    m = ms.add_parser("put")
    m.add_argument("region")
    m.add_argument("key")
    m.add_argument("value", help="the value, or - to read stdin")
    m.add_argument("--embed", action="store_true", help="also store its embedding, for mem search")
    m = ms.add_parser("search", help="entries closest in meaning to a query (those put with --embed)")
    m.add_argument("region")
    m.add_argument("query")
    m.add_argument("-k", type=int, default=5)
    m = ms.add_parser("ls")
    m.add_argument("region")
    m.add_argument("--prefix", default="")
    m = ms.add_parser("rm")
    m.add_argument("region")
    m.add_argument("key", nargs="?", default=None, help="omit to delete the whole region")
    s = sub.add_parser("svc", help="services: list, call, reload")
    s.add_argument("--as", dest="as_name", default=None,
                   help="program name to call as (services keep per-program state; default: llmos-svc)")
    vs = s.add_subparsers(dest="svc_cmd", required=True)
    v = vs.add_parser("list", help="services, their tasks and arguments, and plugins that failed to load")
    v.add_argument("--json", action="store_true")
    v = vs.add_parser("call", help="run a service's task: llmos svc call kb ask --arg kb=docs --arg question='...'")
    v.add_argument("service")
    v.add_argument("task")
    v.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a task argument; the value is parsed as JSON when it can be (42, true, [1,2]), else a string")
    v.add_argument("--stream", action="store_true", help="print text as the task produces it")
    v.add_argument("--deadline", type=float, default=None, help="seconds before the call ends with ETIMEDOUT")
    v.add_argument("--json", action="store_true", help="print the whole result as JSON")
    v = vs.add_parser("reload", help="restart the service host to load newly installed plugins (needs admin)")
    v.add_argument("--drain", type=float, default=10.0, help="seconds to let calls in flight finish")
    s = sub.add_parser("summarize", help="summarize a text file (map-reduce; any length)")
    s.add_argument("file", help="the file, or - for stdin")
    s.add_argument("--style", choices=["one_line", "bullets", "paragraph"], default="paragraph")
    s.add_argument("--sentences", type=int, default=None, help="how many sentences or bullets")
    s.add_argument("--mode", choices=["extractive", "abstractive"], default="extractive")
    s = sub.add_parser("support", help="a customer-support chat over a folder of documents")
    s.add_argument("--kb", required=True, help="folder of .md/.txt documents to answer from (ingested first)")
    s.add_argument("--name", default=None, help="knowledge base name (default: the folder's name)")
    s.add_argument("--conversation", default=None, help="conversation id to continue (default: a new one)")
    s = sub.add_parser("demo", help="boot a private kernel on the default model, ask it a question, stop it")
    s.add_argument("question", nargs="?", default="What is the capital of France?")
    s.add_argument("--device", default="auto")
    s.add_argument("--max-tokens", type=int, default=64)
    return p


COMMANDS = {"ps": cmd_ps, "devices": cmd_devices, "models": cmd_models, "load": cmd_load, "unload": cmd_unload,
            "run": cmd_run, "chat": cmd_chat, "mem": cmd_mem, "sysinfo": cmd_sysinfo, "kill": cmd_kill,
            "demo": cmd_demo, "svc": cmd_svc, "summarize": cmd_summarize, "support": cmd_support}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    args, rest = p.parse_known_args(argv)
    if args.cmd == "boot":
        return cmd_boot(args, rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return COMMANDS[args.cmd](args)
    except KernelUnavailable as exc:
        print(f"llmos: {exc.message}", file=sys.stderr)
        return 3
    except LLMOSError as exc:
        print(f"llmos {args.cmd}: {exc.errno}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
