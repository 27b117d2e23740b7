"""LoRA fine-tuning on the driver: one optimizer step per TrainStep, on a copy of a loaded model.

The engine keeps serving the base model while a job trains, so the trainer never touches the
model the engine holds: it deep-copies it once at TrainStart and wraps the copy with peft. Each
TrainStep runs in the driver loop like one engine step, so the kernel's fair scheduler decides
how often a job gets the device. Loss counts only the tokens the model should learn to write
(the assistant's turns, or a completion), never the prompt. The driver never reads or writes
the state dir: checkpoints and the finished adapter travel to the kernel as file bytes.

The example order is a function of (seed, epoch), so a job resumed from a checkpoint at step N
runs exactly the batches it would have run.
"""

from __future__ import annotations

import copy
import io
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmos.specs import channel

from .loader import LoadedModel
from .lora import LoRALinear
from .quant import Int8Linear

IGNORE = -100     # the label of a token the loss does not count
PAUSE_EVERY_S = 0.5
CHECKPOINT_FILES = ("adapter_model.safetensors", "optimizer.pt")


class TrainError(Exception):
    """A job that cannot train, with the errno its TrainFailed carries."""

    def __init__(self, errno: str, message: str):
        super().__init__(message)
        self.errno = errno


@dataclass
class Example:
    ids: list[int]
    labels: list[int]     # IGNORE where the loss does not count


def encode_example(lm: LoadedModel, example: dict, max_seq_len: int) -> Example:
    """Token ids and labels of one chat or prompt/completion example, cut to max_seq_len tokens."""
    tok = lm.tokenizer
    if "messages" in example:
        if not getattr(tok, "chat_template", None):
            raise TrainError("EINVAL", f"model '{lm.name}' has no chat template: use prompt/completion examples")
        messages = example["messages"]

        def length(upto: int, prompt: bool) -> int:
            text = tok.apply_chat_template(messages[:upto], add_generation_prompt=prompt, tokenize=False)
            return len(tok(text, add_special_tokens=False).input_ids)

        text = tok.apply_chat_template(messages, tokenize=False)
        ids = tok(text, add_special_tokens=False).input_ids
        labels = [IGNORE] * len(ids)
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                start, end = length(i, True), length(i + 1, False)
                labels[start:end] = ids[start:end]
    else:
        prompt = tok(example["prompt"]).input_ids
        completion = tok(example["completion"], add_special_tokens=False).input_ids + lm.eos_token_ids[:1]
        ids, labels = prompt + completion, [IGNORE] * len(prompt) + completion
    return Example(ids[:max_seq_len], labels[:max_seq_len])


def unwrapped_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of the served model as it was loaded: each projection that serving wrapped for its
    adapters (drivers/lora.py) is copied as the projection it wraps, without the adapters."""
    memo = {id(m): copy.deepcopy(m.base) for m in model.modules() if isinstance(m, LoRALinear)}
    return copy.deepcopy(model, memo)


class Trainer:
    """One job's LoRA model, optimizer and data on this driver."""

    def __init__(self, lm: LoadedModel, msg: channel.TrainStart, pause=lambda: None):
        from peft import LoraConfig, get_peft_model

        hyper = msg.hyper
        if any(isinstance(m, Int8Linear) for m in lm.model.modules()):
            raise TrainError("EINVAL", f"model '{lm.name}' is loaded int8; fine-tune a model loaded without quant")
        self.job = msg.job
        self.hyper = hyper
        self.steps = hyper["steps"]
        self.lm = lm
        self.examples = msg.examples
        self.encoded: dict[int, Example] = {}   # tokenized as their batches come: a big set starts at once
        if not getattr(lm.tokenizer, "chat_template", None) and any("messages" in e for e in msg.examples):
            raise TrainError("EINVAL", f"model '{lm.name}' has no chat template: use prompt/completion examples")
        self.pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.eos_token_ids[0]
        self.device = lm.device
        base = unwrapped_copy(lm.model)         # the engine keeps serving lm.model, untouched
        base.requires_grad_(False)
        config = LoraConfig(r=hyper["rank"], lora_alpha=hyper["alpha"], lora_dropout=0.0,
                            target_modules=list(hyper["target_modules"]), task_type="CAUSAL_LM")
        try:
            self.model = get_peft_model(base, config)
        except ValueError as exc:        # target modules the model does not have
            raise TrainError("EINVAL", f"cannot put LoRA on model '{lm.name}': {exc}") from None
        self.model.train()
        self._keep_answering(pause)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=hyper["lr"])
        if msg.checkpoint:
            self._restore(msg.checkpoint)

    def batch_of(self, step: int) -> list[Example]:
        """The examples of 1-based step `step`: epochs shuffle by (seed, epoch), batches follow in order."""
        batch_size = self.hyper["batch_size"]
        per_epoch = math.ceil(len(self.examples) / batch_size)
        epoch, index = divmod(step - 1, per_epoch)
        order = list(range(len(self.examples)))
        random.Random(self.hyper.get("seed", 0) * 100_003 + epoch).shuffle(order)
        batch = order[index * batch_size:(index + 1) * batch_size]
        for i in batch:
            if i not in self.encoded:
                self.encoded[i] = encode_example(self.lm, self.examples[i], self.hyper["max_seq_len"])
        return [self.encoded[i] for i in batch]

    def _keep_answering(self, pause) -> None:
        """A step of a big model on a CPU can take longer than the kernel waits for a ping's answer:
        after each decoder layer, forward and backward, the driver loop may take in pings and
        submissions (as between an engine step's layers), at most every PAUSE_EVERY_S."""
        last = [time.monotonic()]

        def tick(*_):
            if time.monotonic() - last[0] >= PAUSE_EVERY_S:
                pause()
                last[0] = time.monotonic()

        def after_layer(module, args, output):
            tick()
            hidden = output[0] if isinstance(output, tuple) else output
            if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
                hidden.register_hook(tick)      # its gradient: the same layer, on the way back

        for module in self.model.modules():
            if type(module).__name__.endswith("DecoderLayer"):
                module.register_forward_hook(after_layer)

    def step(self, step: int) -> tuple[float, int]:
        """One optimizer step on step's micro-batch: (mean loss over its counted tokens, tokens read)."""
        batch = self.batch_of(step)
        width = max(len(e.ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            ids[row, :len(e.ids)] = torch.tensor(e.ids)
            labels[row, :len(e.labels)] = torch.tensor(e.labels)
            mask[row, :len(e.ids)] = 1
        with torch.enable_grad():
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                             labels=labels.to(self.device))
            loss = out.loss
            if not torch.isfinite(loss):
                if (labels[:, 1:] == IGNORE).all():
                    return 0.0, int(mask.sum())   # nothing to learn in this batch (all cut off by max_seq_len)
                raise TrainError("EIO", f"the loss is {loss.item()} at step {step}; try a smaller lr")
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return float(loss.item()), int(mask.sum())

    def checkpoint(self) -> dict[str, bytes]:
        """The adapter's weights and the optimizer's state, as file bytes for the kernel to keep."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save

        weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.model).items()}
        state = io.BytesIO()
        torch.save(self.optimizer.state_dict(), state)
        return {"adapter_model.safetensors": save(weights), "optimizer.pt": state.getvalue()}

    def _restore(self, files: dict[str, bytes]) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load

        missing = [f for f in CHECKPOINT_FILES if f not in files]
        if missing:
            raise TrainError("EINVAL", f"the checkpoint lacks {', '.join(missing)}")
        set_peft_model_state_dict(self.model, {k: v.to(self.device) for k, v in
                                               load(files["adapter_model.safetensors"]).items()})
        state = torch.load(io.BytesIO(files["optimizer.pt"]), map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state)

    def adapter_files(self) -> dict[str, bytes]:
        """The finished adapter in peft's own format (adapter_config.json, adapter_model.safetensors)."""
        with tempfile.TemporaryDirectory(prefix="llmos-adapter-") as tmp:
            self.model.save_pretrained(tmp)
            return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


class Training:
    """The driver's jobs: TrainStart, TrainStep and TrainStop in, TrainStepped, TrainDone and TrainFailed out."""

    def __init__(self, models: dict, send, pause=lambda: None):
        self.models = models     # model -> Engine (its .lm is the loaded base)
        self.send = send
        self.pause = pause       # lets the driver loop answer pings in a long step
        self.jobs: dict[str, Trainer] = {}

    def start(self, msg: channel.TrainStart) -> None:
        engine = self.models.get(msg.model)
        if engine is None:
            self._fail(msg.job, "EIO", f"model '{msg.model}' is not loaded on this driver")
            return
        try:
            self.jobs[msg.job] = Trainer(engine.lm, msg, self.pause)
        except TrainError as exc:
            self._fail(msg.job, exc.errno, str(exc))
        except Exception as exc:  # a job that cannot start fails alone, never the driver
            self._fail(msg.job, "EIO", f"{exc.__class__.__name__}: {exc}")

    def step(self, msg: channel.TrainStep) -> None:
        trainer = self.jobs.get(msg.job)
        if trainer is None:
            return     # it failed at its start (TrainFailed said so) or was stopped
        try:
            loss, tokens = trainer.step(msg.step)
            every = trainer.hyper["checkpoint_every"]
            last = msg.step >= trainer.steps
            saved = trainer.checkpoint() if every and msg.step % every == 0 and not last else None
            self.send(channel.TrainStepped(msg.job, msg.step, loss, tokens, saved))
            if last:
                self.send(channel.TrainDone(msg.job, trainer.adapter_files(), loss))
                self.jobs.pop(msg.job, None)
        except Exception as exc:
            errno = exc.errno if isinstance(exc, TrainError) else "EIO"
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                errno = "ENOMEM"
            self._fail(msg.job, errno, f"step {msg.step}: {exc.__class__.__name__}: {exc}")

    def stop(self, msg: channel.TrainStop) -> None:
        self.jobs.pop(msg.job, None)

    def _fail(self, job: str, errno: str, message: str) -> None:
        self.jobs.pop(job, None)
        self.send(channel.TrainFailed(job, errno, message[:2000]))
