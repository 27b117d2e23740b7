"""LoRA adapters made with peft on the tiny model, laid out in a state dir as fine-tune jobs write them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def make_adapter(base_path: str, state_dir: Path, name: str, seed: int, *, base: str = "tiny",
                 owner: str = "operator", targets: tuple[str, ...] = ("q_proj", "v_proj"), rank: int = 4,
                 shared: bool = False) -> Path:
    """A LoRA adapter of random weights (B not zero, so it changes the output) over the model at
    base_path, at STATE_DIR/adapters/OWNER/BASE/NAME with its llmos.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, torch_dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False)
    folder = Path(state_dir) / "adapters" / owner / base / name
    get_peft_model(model, config).save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)
    (folder / "llmos.json").write_text(json.dumps({
        "base": base, "name": name, "principal": owner, "version": 1, "created": time.time(),
        "data_sha256": "", "hyperparameters": {"r": rank, "lora_alpha": 2 * rank, "targets": list(targets)},
        "eval": None, "shared": shared}))
    return folder


def adapter_files(folder: Path) -> dict[str, bytes]:
    """PEFT's files of an adapter, as the kernel sends them to a driver."""
    return {name: (Path(folder) / name).read_bytes() for name in ("adapter_config.json", "adapter_model.safetensors")}


def merged_greedy(base_path: str, folder: Path, prompt_ids: list[int], n: int) -> list[int]:
    """n greedy tokens of peft's merged model (the base with B·A·scale added to its weights), EOS ignored."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, torch_dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload().eval()
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(merged(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt_ids):]
