"""The batch layout: the engine's chunks as one flat batch of tokens for the paged runner.

A step mixes single decode tokens and prefill pieces of many sequences. They are laid out
without padding, decodes first (so their attention runs as one batched call), with each token's
slot in the paged cache. Prefills that start their sequence are packed into right-padded groups
for one causal SDPA call each; prefills that continue one attend to its cache through a mask.
Every running sequence's block table lives on the device in `BlockTables`, updated by what is
new each step. How attention then uses this layout is attention.py's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sequence import Chunk


class BlockTables:
    """Every running sequence's block table, kept on the device and updated by what is new.

    Each sequence owns a row while it runs; a step sends only the blocks added since the last
    one. The last row is for padding: all of it points at a scratch block no sequence owns, so
    padded decode rows write and read there and nowhere else.
    """

    def __init__(self, max_seqs: int, width: int, scratch_block: int, device: torch.device):
        self.data = torch.full((max_seqs + 1, width), scratch_block, dtype=torch.int32, device=device)
        self.padding_row = max_seqs
        self._free = list(range(max_seqs - 1, -1, -1))
        self._rows: dict[int, list[int]] = {}       # seq_id -> [row, blocks already sent]

    def sync(self, chunks: list[Chunk]) -> list[int]:
        """The chunks' rows, after sending their new blocks to the device."""
        rows, where, blocks = [], [], []
        for c in chunks:
            entry = self._rows.get(c.seq_id)
            if entry is None:
                if not self._free:
                    raise RuntimeError(f"more than {self.padding_row} sequences in one runner; "
                                       f"give make_runner a larger max_seqs")
                entry = self._rows[c.seq_id] = [self._free.pop(), 0]
            row, sent = entry
            table = c.block_table
            if len(table) > sent:
                if len(table) > self.data.shape[1]:
                    raise RuntimeError(f"sequence {c.seq_id} holds {len(table)} blocks, more than the "
                                       f"{self.data.shape[1]} its context length allows")
                where += [row * self.data.shape[1] + j for j in range(sent, len(table))]
                blocks += table[sent:]
                entry[1] = len(table)
            rows.append(row)
        if blocks:
            update = torch.tensor([where, blocks], dtype=torch.long).to(self.data.device, non_blocking=True)
            self.data.view(-1).index_copy_(0, update[0], update[1].to(torch.int32))
        return rows

    def release(self, seq_id: int) -> None:
        entry = self._rows.pop(seq_id, None)
        if entry is not None:
            self._free.append(entry[0])


@dataclass
class PackedPrefills:
    """Prefill chunks that start their sequence, laid out as a right-padded batch [P, L].

    Right padding keeps causal attention exact for the real tokens, so one SDPA call covers
    them all; `gather` picks rows of the flat batch (padding repeats a real row), `src` the
    real rows of the padded result and `dest` where they go in the flat batch.
    """

    gather: torch.Tensor   # [P * L]
    src: torch.Tensor      # [n]
    dest: torch.Tensor     # [n]
    shape: tuple[int, int]


@dataclass
class ContinuedPrefill:
    """A prefill chunk that continues a sequence: it attends to the cache through a causal mask."""

    q_start: int
    q_end: int
    row: int                    # the sequence's row in BlockTables
    mask: torch.Tensor          # [n, context]


@dataclass
class DecodeGroup:
    """Decodes of similar length, attended together with their tables cut to the longest of them.

    Without the Triton kernel, decode attention gathers every sequence's keys up to the width of
    the table, so one long sequence would make all the short ones pay for its length.
    """

    index: torch.Tensor   # [g] positions among the step's decodes
    width: int            # blocks that the longest of them spans


@dataclass
class StepBatch:
    """Everything the forward pass needs about the step, built once and shared by all layers.

    Decode tokens come first in the flat batch so their attention runs as one batched call.
    """

    input_ids: torch.Tensor           # [T]
    positions: torch.Tensor           # [T]
    slots: torch.Tensor               # [T] flat index into the cache: block * block_size + offset
    logits_rows: torch.Tensor | None  # [S] rows of the flat batch whose logits are sampled; None: all
    num_decodes: int
    decode_tables: torch.Tensor       # [num_decodes, width] block ids
    decode_lengths: torch.Tensor      # [num_decodes] tokens each decode attends to
    packed: list[PackedPrefills]
    continued: list[ContinuedPrefill]
    decode_groups: list[DecodeGroup] | None = None   # without the Triton kernel: decodes of like length
    adapter_rows: dict[str, torch.Tensor] | None = None   # LoRA adapter -> its rows of the flat batch (lora.py)


class BatchLayout:
    """A step's chunks as the forward pass reads them: one flat batch of tokens, where each
    token's keys and values go in the cache, and what each sequence attends to."""

    def __init__(self, tables: BlockTables, block_size: int, device: torch.device, group_decodes: bool):
        """group_decodes: attend decodes in groups of like length (decode attention without
        the Triton kernel pads every sequence to the longest of its call)."""
        self.tables = tables
        self.block_size = block_size
        self.device = device
        self.group_decodes = group_decodes

    def decode_only(self, inputs: torch.Tensor, width: int | None = None) -> StepBatch:
        """The step batch of decodes alone, from inputs [3, size]: token ids, positions, table rows.

        It reads nothing from the host, so a CUDA graph can capture it. width trims the block
        tables when not captured; the kernel reads only up to each length either way, so
        trimming changes nothing but the work of the SDPA fallback.
        """
        ids, positions, rows = inputs
        tables = self.tables.data.index_select(0, rows)
        if width is not None:
            tables = tables[:, :width]
        blocks = tables.gather(1, (positions // self.block_size)[:, None])[:, 0].long()
        slots = blocks * self.block_size + positions % self.block_size
        return StepBatch(ids, positions, slots, None, len(ids), tables, positions + 1, [], [])

    def with_prefill(self, chunks: list[Chunk], rows: list[int], adapters: list[str] | None = None) -> StepBatch:
        """The flat batch of a step with prefill in it (or with adapters): decodes first, then the
        prefill chunks. adapters: each chunk's LoRA adapter ("" for none), grouped into rows."""
        bs = self.block_size
        order = sorted(range(len(chunks)), key=lambda i: not chunks[i].is_decode)
        ids, positions, token_rows, last_row = [], [], [], {}
        decode_rows, decode_lengths, fresh, continued = [], [], [], []
        adapter_rows: dict[str, list[int]] = {}
        for i in order:
            c, row = chunks[i], rows[i]
            a, n = len(ids), len(c.tokens)
            if adapters and adapters[i]:
                adapter_rows.setdefault(adapters[i], []).extend(range(a, a + n))
            ids += c.tokens
            positions += range(c.start, c.start + n)
            token_rows += [row] * n
            last_row[i] = a + n - 1
            if c.is_decode:
                decode_rows.append(row)
                decode_lengths.append(c.start + 1)
            elif c.start == 0:
                fresh.append((a, n))
            else:
                context = c.start + n
                mask = torch.arange(context)[None, :] <= torch.arange(c.start, context)[:, None]
                continued.append(ContinuedPrefill(a, a + n, row, mask.to(self.device)))
        width = -(-max(decode_lengths, default=1) // bs)
        positions_t = self._tensor(positions)
        token_blocks = self.tables.data[self._tensor(token_rows), positions_t // bs].long()
        return StepBatch(self._tensor(ids), positions_t, token_blocks * bs + positions_t % bs,
                         self._tensor([last_row[i] for i, c in enumerate(chunks) if c.sample]),
                         len(decode_rows), self.tables.data[self._tensor(decode_rows)][:, :width],
                         self._tensor(decode_lengths), [self._pack(g) for g in pack_groups(fresh)], continued,
                         self.decode_groups(decode_lengths),
                         {name: self._tensor(r) for name, r in adapter_rows.items()} or None)

    def decode_groups(self, lengths: list[int]) -> list[DecodeGroup] | None:
        """Decodes grouped by length where decode attention pads (no Triton kernel); None: one call."""
        if not self.group_decodes or len(lengths) < 2:
            return None
        groups = length_groups(lengths, max_padding=1.25)
        if len(groups) == 1:
            return None
        return [DecodeGroup(self._tensor(g), -(-lengths[g[0]] // self.block_size)) for g in groups]

    def _pack(self, spans: list[tuple[int, int]]) -> PackedPrefills:
        starts = torch.tensor([a for a, _ in spans])
        lengths = torch.tensor([n for _, n in spans])
        longest = int(lengths.max())
        offsets = torch.arange(longest)
        real = (offsets[None, :] < lengths[:, None]).flatten()
        index = (starts[:, None] + offsets[None, :]).flatten()
        gather = torch.where(real, index, starts.repeat_interleave(longest))
        src = real.nonzero().squeeze(1)
        return PackedPrefills(gather.to(self.device), src.to(self.device), index[src].to(self.device),
                              (len(spans), longest))

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(self.device, non_blocking=True)


def pack_groups(spans: list[tuple[int, int]], max_padding: float = 2.0) -> list[list[tuple[int, int]]]:
    """Spans (start, length), longest first, grouped so padding at most doubles a group's tokens."""
    return [[spans[i] for i in group] for group in length_groups([n for _, n in spans], max_padding)]


def length_groups(lengths: list[int], max_padding: float) -> list[list[int]]:
    """Indices of lengths, longest first, grouped so that padding every member of a group to
    its first (longest) costs at most max_padding times the group's real length."""
    groups: list[list[int]] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_padding * (tokens + lengths[i]):
            groups[-1].append(i)
            tokens += lengths[i]
        else:
            groups.append([i])
            tokens = lengths[i]
    return groups
