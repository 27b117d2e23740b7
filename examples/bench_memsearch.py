"""Time memsearch on a region of 100k entries: the syscall end to end, and the search alone.

    python examples/bench_memsearch.py [--entries 100000] [--queries 200]

It fills a fresh state dir with N entries whose vectors are random unit vectors of MiniLM's
dimension (384) plus 100 entries embedded for real, written in bulk through the kernel's own
MemoryStore (100k memwrite syscalls, each fsynced, would take minutes and time SQLite, not
search), boots a kernel on that state dir, and measures:

- the first memsearch (loads the region's matrix from SQLite),
- memsearch syscalls end to end (embedding the query through the driver + the search + values),
- the embed syscall alone for the same queries (so the search's share is the difference),
- the search alone in process: numpy (what the kernel uses) and, if installed, faiss.
Brute-force search time does not depend on what the vectors mean, so random ones time it fairly;
the real entries check that the answers are right.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llmos.kernel.memstore import MemoryStore, _named
from llmos.kernel.principals import OPERATOR
from llmos.userland.testing import KernelProcess

# The region belongs to the operator: the principal of whoever connects on the kernel's private socket.
OWNER, REGION, MODEL, DIM = OPERATOR, "big", "minilm-l6-v2", 384
REAL = [f"Order {i} of a {c} {t} was shipped to {city}." for i, (c, t, city) in enumerate(
    (c, t, city) for c in ("red", "blue", "green", "black", "white")
    for t in ("chair", "lamp", "kettle", "desk") for city in ("Leeds", "Bristol", "Oslo", "Lima", "Osaka"))]


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) * 1000


def fill(state: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    store = MemoryStore(state / "memory.sqlite3")
    try:
        batch = 10_000
        for start in range(0, n, batch):
            vecs = rng.standard_normal((min(batch, n - start), DIM), dtype=np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            items = [(f"r{start + i:06d}", f"random entry {start + i}", v) for i, v in enumerate(vecs)]
            asyncio.run(store.write_many(OWNER, REGION, items, MODEL))
    finally:
        store.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmos-bench-") as tmp:
        tmp = Path(tmp)
        t = time.monotonic()
        fill(tmp / "state", args.entries)
        print(f"filled {args.entries} entries in {time.monotonic() - t:.1f}s", file=sys.stderr)
        with KernelProcess(tmp, state_dir=tmp / "state", env={"LLMOS_NO_SERVICES": "1"}) as kernel, \
                kernel.client("bench", timeout=None) as c:
            for i, text in enumerate(REAL):
                c.memwrite(REGION, f"real{i:03d}", text, embed=True)
            queries = [REAL[i % len(REAL)] for i in range(args.queries)]
            c.embed("warm up")
            t = time.perf_counter()
            first = c.memsearch(REGION, queries[0], k=5)
            first_s = time.perf_counter() - t
            total, embed_only = [], []
            correct = 0
            for i, q in enumerate(queries):
                t = time.perf_counter()
                r = c.memsearch(REGION, q, k=5)
                total.append(time.perf_counter() - t)
                correct += r["results"][0]["key"] == f"real{i % len(REAL):03d}"
                t = time.perf_counter()
                c.embed(q)
                embed_only.append(time.perf_counter() - t)
            searched = first["searched"]
            qvecs = np.asarray(c.embed(queries[:50])["vectors"], dtype=np.float32)
        store = MemoryStore(tmp / "state" / "memory.sqlite3")
        index = store._pool.submit(store._index, _named(OWNER, REGION), MODEL).result()
        store.close()
        numpy_s = []
        for q in qvecs:
            t = time.perf_counter()
            index.search(q, 5)
            numpy_s.append(time.perf_counter() - t)
        rows = [("entries searched", f"{searched}"),
                ("first memsearch (loads the matrix from SQLite)", f"{first_s * 1000:.0f} ms"),
                ("memsearch syscall, end to end: p50 / p95", f"{pct(total, 50):.1f} / {pct(total, 95):.1f} ms"),
                ("embed syscall of the query alone: p50 / p95", f"{pct(embed_only, 50):.1f} / {pct(embed_only, 95):.1f} ms"),
                ("search alone, numpy (the kernel's): p50 / p95", f"{pct(numpy_s, 50):.2f} / {pct(numpy_s, 95):.2f} ms"),
                ("top-1 correct on the real entries", f"{correct}/{len(queries)}")]
        try:
            import faiss
            matrix = index.matrix[:len(index)]
            flat = faiss.IndexFlatIP(DIM)
            flat.add(matrix)
            faiss_s = []
            for q in qvecs:
                t = time.perf_counter()
                flat.search(q[None], 5)
                faiss_s.append(time.perf_counter() - t)
            rows.append((f"search alone, faiss {faiss.__version__} IndexFlatIP: p50 / p95",
                         f"{pct(faiss_s, 50):.2f} / {pct(faiss_s, 95):.2f} ms"))
        except ImportError:
            rows.append(("search alone, faiss", "not installed (pip install faiss-cpu to compare)"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    print(f"({os.cpu_count()} CPUs; {statistics.mean(total) * 1000:.1f} ms mean per memsearch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
