"""The torch driver: transformers models on one device (cpu or cuda:N), batched by the engine.

It turns the kernel's typed messages (specs/channel.py) into engine calls and the engine's
step events back into TokenEvents. Requests arrive already checked against the syscall table;
what only the driver can know (the prompt's length in tokens against the model's context) it
checks here, and every failure it reports carries its errno.

On a CPU, a model that comes as a GGUF file gets two engines where llama-cpp-python is installed
(LLMOS_CPU_BACKEND=torch turns that off): one on llama.cpp (llamacpp_runner.py: the file's 4-bit
weights, about 4x faster than the dequantized bf16 for one stream, or a Q8_0 copy of them where that
batches better: llamacpp_weights.py) and one on torch (faster for a crowd on some CPUs, and the one
that serves LoRA adapters and `score`), each with half of the KV budget; the model's requests run on
one or the other as their number says (engine_pair.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Generator

from llmos.specs import channel
from llmos.specs.channel import TokenEvent, device_kind
from llmos.specs.modelspec import ModelSpec

from .cpu_threads import ThreadPolicy
from .interface import Driver, Reply
from .engine_pair import EnginePair, describe_steps, llamacpp_engine
from .llamacpp_runner import use_llamacpp
from .slices import run_to_end

# Sequences per step, tokens per step, and prompt tokens that may cut into a step. A GPU step
# costs about the same at batch 256 as at 64, so it wants wide batches and big prefill chunks.
# On two CPU cores a 256-token step does the most tokens per second (512 is slower per token:
# the prefill attention grows faster than the matmuls), and a short interactive prompt cuts in.
ENGINE_SIZES = {"cpu": {"max_seqs": 64, "max_batch_tokens": 256, "cut_in_tokens": 64},
                "cuda": {"max_seqs": 256, "max_batch_tokens": 8192, "cut_in_tokens": 0}}


PAIR_KV_SHARE = 2   # a llama.cpp engine and the torch engine beside it each get half of the model's KV budget


def _given(value, default):
    return default if value is None else value


class DeviceUnavailable(RuntimeError):
    """The device named cannot be used by this torch: an operator's mistake, not a driver bug."""


def check_cuda_device(torch, device: str) -> None:
    """Refuse a CUDA device this torch cannot use, in words an operator can act on."""
    if not torch.cuda.is_available():
        why = "was built without CUDA" if torch.version.cuda is None else "finds no CUDA GPU"
        raise DeviceUnavailable(f"no device {device}: torch {torch.__version__} {why}; boot with --device cpu")
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"no device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)")


class TorchDriver(Driver):
    def __init__(self, device: str, dtype: str = "auto"):
        import torch

        from .loader import auto_dtype

        self.device = device
        self.kind = device_kind(device)
        self.torch_device = "cpu" if self.kind == "cpu" else device   # cpu:N are drivers sharing the CPU
        if self.kind == "cuda":
            check_cuda_device(torch, device)
        self.dtype = auto_dtype(device) if dtype == "auto" else dtype
        self.torch = torch
        self.engines: dict = {}          # model -> Engine (generate models)
        self.pairs: dict = {}            # model -> EnginePair, where llama.cpp and torch share its requests
        self.embedders: dict = {}        # model -> LoadedModel (embedding models)
        self.owner: dict = {}            # rid -> the Engine it runs on, for cancel
        self.threads = ThreadPolicy.from_env(torch) if self.kind == "cpu" else None

    def tune_threads(self) -> None:
        if self.threads is not None:
            self.threads.tick()

    def hello(self) -> channel.Hello:
        if self.kind == "cuda":
            free, total = self.torch.cuda.mem_get_info(self.torch.device(self.device))
            total = int(total * 0.92)
        else:
            import psutil

            mem = psutil.virtual_memory()
            free, total = mem.available, int(mem.total * 0.75)
        return channel.Hello(device=self.device, pid=os.getpid(), kind=self.kind, total_bytes=total,
                             free_bytes=int(free), dtype=self.dtype, max_seqs=ENGINE_SIZES[self.kind]["max_seqs"])

    def load(self, msg: channel.Load, on_stage=lambda stage: None) -> channel.Loaded:
        from .engine import Engine
        from .loader import load

        started = time.monotonic()
        spec = ModelSpec(**msg.spec)
        lm = load(spec, self.torch_device, self.dtype, on_stage)
        kv_bytes = msg.kv_bytes
        if lm.kind == "generate":
            on_stage("kv cache")
            gguf = os.path.join(spec.path, spec.gguf_file) if spec.gguf_file and not spec.quant else None
            sizes = ENGINE_SIZES[self.kind]
            if use_llamacpp(gguf, self.kind):      # llama.cpp for a few requests, torch for a crowd (engine_pair.py)
                beside = kv_bytes // PAIR_KV_SHARE
                fast, weights, steps = llamacpp_engine(     # the file's weights, or a Q8_0 copy: llamacpp_weights.py
                    lambda path: Engine(lm, kv_budget_bytes=kv_bytes - beside, gguf_path=path, **sizes), gguf)
                engines = [fast, Engine(lm, kv_budget_bytes=beside, **sizes)]
                pair = EnginePair.for_this_machine(*engines, sizes["max_seqs"], steps.get(weights))   # about a second
                print(f"driver: {msg.model}: llama.cpp on the {weights} weights"
                      f"{' (' + describe_steps(steps) + ')' if steps else ''}, {fast.runner.describe()}; "
                      f"{pair.describe()}", file=sys.stderr)
                self.pairs[msg.model] = pair
            else:
                engines = [Engine(lm, kv_budget_bytes=kv_bytes, **sizes)]
            self.engines[msg.model] = engines[0]
            kv_bytes = sum(engine.kv_bytes for engine in engines)
            on_stage("grammars")
            for engine in engines:
                engine.grammars.prepare()     # not on the first constrained request's step
        else:
            self.embedders[msg.model] = lm
            kv_bytes = 0
        return channel.Loaded(model=msg.model, bytes=lm.bytes, kv_bytes=kv_bytes, context_length=lm.context_length,
                              load_s=time.monotonic() - started, kind=lm.kind,
                              backend=self.engines[msg.model].backend if lm.kind == "generate" else "torch")

    def unload(self, model: str) -> None:
        engine = self.engines.pop(model, None)
        if engine is not None and hasattr(engine.runner, "close"):
            engine.runner.close()     # llama.cpp's memory goes now, not when the collector gets to it
        self.pairs.pop(model, None)
        self.embedders.pop(model, None)
        if self.kind == "cuda":
            self.torch.cuda.empty_cache()

    def submit(self, msg: channel.Submit) -> TokenEvent | None:
        from .engine import PromptTooLong
        from .loader import encode_prompt
        from .sequence import GenRequest

        engine = self._engine(msg.model, msg.adapter)
        if engine is None:
            return TokenEvent.failed(msg.rid, "EIO", f"model '{msg.model}' is not loaded on {self.device}")
        if msg.adapter and not getattr(engine.runner, "has_adapter", lambda a: False)(msg.adapter):
            return TokenEvent.failed(msg.rid, "EIO", f"adapter '{msg.adapter}' is not loaded on {self.device}")
        model = engine.lm.sampling      # for what the caller left out (None)
        try:
            ids = msg.prompt_ids if msg.prompt_ids is not None else encode_prompt(engine.lm, msg.prompt, msg.messages,
                                                                                   msg.tools)
            engine.add(GenRequest(rid=msg.rid, prompt_ids=ids, max_tokens=msg.max_tokens,
                                  temperature=_given(msg.temperature, model.temperature),
                                  top_p=_given(msg.top_p, model.top_p), top_k=_given(msg.top_k, model.top_k),
                                  repetition_penalty=_given(msg.repetition_penalty, model.repetition_penalty),
                                  stop=msg.stop, seed=msg.seed, priority=msg.priority, cut_in=msg.cut_in,
                                  progress=msg.progress, resume=list(msg.resume), cache_salt=msg.cache_salt,
                                  constraint=msg.constraint, tool_parse=msg.tool_parse, logprobs=msg.logprobs,
                                  top_logprobs=msg.top_logprobs, presence_penalty=msg.presence_penalty,
                                  frequency_penalty=msg.frequency_penalty, logit_bias=msg.logit_bias,
                                  min_tokens=msg.min_tokens))
        except PromptTooLong as exc:
            return TokenEvent.failed(msg.rid, exc.errno, str(exc))
        except ValueError as exc:      # the chat template refused the messages
            return TokenEvent.failed(msg.rid, "EINVAL", str(exc))
        except Exception as exc:       # fails this request alone, never the driver loop that called us
            traceback.print_exc()
            return TokenEvent.failed(msg.rid, "EIO", f"submit failed: {exc.__class__.__name__}: {str(exc)[:500]}")
        self.owner[msg.rid] = engine
        if msg.adapter:
            engine.runner.use_adapter(msg.rid, msg.adapter)
        return None

    def cancel(self, rid: int) -> None:
        engine = self.owner.pop(rid, None)
        if engine is not None:
            engine.cancel(rid)
            self._ended(engine, rid)

    def _engine(self, model: str, adapter: str = ""):
        """The engine a new request for model runs on: its pair's choice (engine_pair.py), else its only one."""
        pair = self.pairs.get(model)
        return pair.engine_for(adapter) if pair is not None else self.engines.get(model)

    def _all_engines(self) -> list:
        return [*self.engines.values(), *(pair.crowd for pair in self.pairs.values())]

    def load_adapter(self, msg: channel.LoadAdapter) -> channel.AdapterLoaded | channel.AdapterFailed:
        """Install a LoRA adapter over a loaded model (drivers/lora.py); refused whole if it does not fit."""
        engine = self._engine(msg.model, msg.adapter)
        if engine is None:
            return channel.AdapterFailed(msg.model, msg.adapter, f"model '{msg.model}' is not loaded on {self.device}")
        if not hasattr(engine.runner, "load_adapter"):
            return channel.AdapterFailed(msg.model, msg.adapter, f"model '{msg.model}' runs on the fallback runner "
                                         f"(not Llama-shaped), which cannot batch LoRA adapters")
        try:
            nbytes = engine.runner.load_adapter(msg.adapter, msg.files)
        except ValueError as exc:
            return channel.AdapterFailed(msg.model, msg.adapter, str(exc))
        return channel.AdapterLoaded(msg.model, msg.adapter, nbytes)

    def unload_adapter(self, msg: channel.UnloadAdapter) -> None:
        engine = self._engine(msg.model, msg.adapter)
        if engine is not None and hasattr(engine.runner, "unload_adapter"):
            engine.runner.unload_adapter(msg.adapter)

    @staticmethod
    def _ended(engine, rid: int) -> None:
        """A request ended: its sequence no longer runs with its adapter."""
        if engine is not None and hasattr(engine.runner, "drop_adapter"):
            engine.runner.drop_adapter(rid)

    def embed(self, msg: channel.Embed) -> channel.Result | channel.Error:
        return run_to_end(self.embed_slices(msg))

    def embed_slices(self, msg: channel.Embed, pause=lambda: None,
                     slice_s=lambda: None) -> Generator[None, None, Reply]:
        """embed in slices (embedding.py): the driver loop steps engines and answers pings between;
        slice_s(): how long a slice may last (None: as long as memory allows)."""
        from .embedding import embed_slices

        lm = self.embedders.get(msg.model)
        if lm is None:
            return channel.Error(msg.rid, "EIO", f"embedding model '{msg.model}' is not loaded on {self.device}")
        vectors, tokens = yield from embed_slices(lm, msg.input, msg.normalize, pause, slice_s)
        return channel.Result(msg.rid, {"model": msg.model, "dim": len(vectors[0]), "vectors": vectors,
                                        "usage": {"prompt_tokens": tokens}})

    def score(self, msg: channel.Score) -> channel.Result | channel.Error:
        return run_to_end(self.score_slices(msg))

    def score_slices(self, msg: channel.Score, pause=lambda: None,
                     slice_s=lambda: None) -> Generator[None, None, Reply]:
        """Each text's summed log-loss under the model (the `score` syscall, scoring.py): no-grad
        forwards outside the engine and its KV cache, in slices between steps like an embed's."""
        from .scoring import nll_slices, token_rows

        engine = self._engine(msg.model, msg.adapter)
        if engine is None:
            return channel.Error(msg.rid, "EIO", f"model '{msg.model}' is not loaded on {self.device}")
        if msg.adapter and not getattr(engine.runner, "has_adapter", lambda a: False)(msg.adapter):
            return channel.Error(msg.rid, "EIO", f"adapter '{msg.adapter}' is not loaded on {self.device}")
        lm = engine.lm
        rows = yield from token_rows(lm, msg.texts, slice_s)
        for i, row in enumerate(rows):
            if len(row) > lm.context_length:
                return channel.Error(msg.rid, "EINVAL", f"score: texts[{i}] is {len(row)} tokens, more than the "
                                                        f"{lm.context_length} of {msg.model}'s context")
        # the adapter's update on every row of these forwards (its wrappers sit in lm.model's projections)
        around = contextlib.nullcontext if not msg.adapter else lambda: engine.runner.lora.using({msg.adapter: None})
        nll = yield from nll_slices(lm, rows, pause, around, slice_s)
        return channel.Result(msg.rid, {"model": msg.model, "tokens": [max(len(row) - 1, 0) for row in rows],
                                        "nll": nll})

    def kv_usage(self) -> float | None:
        engines = self._all_engines()
        total = sum(e.blocks.num_blocks for e in engines)
        return sum(e.blocks.num_used_blocks for e in engines) / total if total else None

    def has_work(self) -> bool:
        return any(e.has_work() for e in self._all_engines())

    def step(self, pause=None) -> list[TokenEvent]:
        """One step of every busy engine.

        pause(events), if given, is called between slices of each step with the events of
        any cut-in (often none): the moment to send them and to take in new submissions.
        """
        out: list[TokenEvent] = []
        for pair in self.pairs.values():
            self.owner.update(pair.rebalance())
        for engine in self._all_engines():
            if not engine.has_work():
                continue
            try:
                with self._compute_threads(engine):
                    events = run_to_end(engine.step_slices(),
                                        lambda cut_in: (pause or out.extend)(self._token_events(cut_in)))
            except Exception as exc:  # a fault no request explains (faults.py) fails the engine's requests, not the driver
                traceback.print_exc()
                events = engine.fail_all(f"engine failure: {exc.__class__.__name__}: {exc}")
            out += self._token_events(events)
        return out

    @contextlib.contextmanager
    def _compute_threads(self, engine):
        """For a step on llama.cpp: llama.cpp computes on the threads torch would have had (the thread
        policy's count), and torch's own ops in the step (sampling) run on one. Two OpenMP pools
        (torch's and llama.cpp's) spinning on the same cores stalled each other: beside a nice-19 job,
        a lone stream fell from 73 to 0.6-2.3 tokens/s with torch on two threads (benchmarks/README.md)."""
        if engine.backend != "llama.cpp":
            yield
            return
        threads = self.torch.get_num_threads()
        engine.runner.set_threads(threads)
        self.torch.set_num_threads(1)
        try:
            yield
        finally:
            self.torch.set_num_threads(threads)

    def _token_events(self, events: list) -> list[TokenEvent]:
        """Engine events as the channel carries them; ended requests are forgotten."""
        out = []
        for ev in events:
            if ev.finish is None:
                out.append(TokenEvent(ev.rid, ev.delta, ev.tokens, prefill=ev.prefill, ids=ev.token_ids or None,
                                      logprobs=ev.logprobs))
                continue
            self._ended(self.owner.pop(ev.rid, None), ev.rid)
            if ev.finish == "cancelled":
                continue
            if ev.finish == "error":
                out.append(TokenEvent.failed(ev.rid, ev.errno, ev.message, ev.tokens))
            else:
                out.append(TokenEvent(ev.rid, ev.delta, ev.tokens, ev.finish, ev.usage, logprobs=ev.logprobs,
                                      tool_calls=ev.tool_calls))
        return out

