"""How the kernels use the CPU: chunk sizes from the cache, and one worker per core over chunks.

Why: an ATen op on a small tensor splits its work statically over every intra-op thread and waits
at a barrier for the slowest; on a shared machine a descheduled peer thread makes each such op
wait a scheduler time slice, so a kernel of thousands of small multi-threaded ops slows down by an
order of magnitude under load (issue 13: 35x). Here every op runs with ONE intra-op thread, on a
cache-sized chunk, and ``workers`` threads pull chunks from a shared counter (dynamic scheduling):
a worker that loses its core simply takes fewer chunks, nobody waits for it until the pass ends.
The ops release the GIL, so the workers run in parallel; there are never more busy threads than
``workers`` (no oversubscription: the intra-op pool is not used while the workers run).

The intra-op thread count is set per call and restored (:func:`intra_op_threads`): torch keeps a
per-thread count (OpenMP) plus a process-wide default for new threads, and both are put back when
the call returns, also on error. Accelerators get one worker and large chunks (the device queues
the ops; the host only launches them).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any, ParamSpec, TypeVar, cast

import torch

__all__ = ["Scratch", "cache_bytes", "caller_threads", "chunk_entries", "empty_out", "intra_op_threads", "map_chunks",
           "one_thread", "workers_for"]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


def _size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * mult


@cache
def cache_bytes() -> int:
    """The cache one core can count on: its L2 plus its share of the last-level cache (Linux sysfs;
    4 MiB where unknown)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    per_core = 0
    try:
        for idx in sorted(os.listdir(base)):
            if not idx.startswith("index"):
                continue
            d = os.path.join(base, idx)
            with open(os.path.join(d, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(d, "level")) as f:
                level = int(f.read())
            if level < 2:
                continue
            with open(os.path.join(d, "size")) as f:
                size = _size(f.read())
            sharing = 1
            try:
                with open(os.path.join(d, "shared_cpu_list")) as f:
                    sharing = _count_cpus(f.read())
            except OSError:
                pass
            per_core += size // max(1, sharing)
    except (OSError, ValueError):
        per_core = 0
    return per_core or (4 << 20)


def _count_cpus(cpu_list: str) -> int:
    n = 0
    for part in cpu_list.strip().split(","):
        if "-" in part:
            a, b = part.split("-")
            n += int(b) - int(a) + 1
        elif part:
            n += 1
    return max(1, n)


def chunk_entries(device: torch.device, n: int, bytes_per_entry: int, workers: int = 1) -> int:
    """Entries per chunk: on CPU, the chunk and its temporaries (``bytes_per_entry`` per entry,
    summed over every buffer a chunk touches) fill about half the cache a core can count on, so
    the second and later ops of a chunk read the cache, not memory; never more than
    ``n / (16 * workers)`` (the per-worker buffers stay a few percent of the model) and a power of
    two in [2^12, 2^22]. Accelerators: 2^24 (fewer launches)."""
    if device.type != "cpu":
        return 1 << 24
    fit = cache_bytes() // 2 // max(1, bytes_per_entry)
    cap = max(1 << 12, n // (16 * max(1, workers)))
    c = max(1 << 12, min(fit, cap, 1 << 22))
    return 1 << (c.bit_length() - 1)


_HUGE = 2 << 20  # the x86-64 / arm64 transparent huge page
_MADV_HUGEPAGE = 14  # Linux <asm-generic/mman-common.h>


@cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise`` (Linux with transparent huge pages in ``madvise`` or ``always`` mode), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return None
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int], int], fn)


HUGE_PAGES = os.environ.get("KMR_HUGE_PAGES", "1") != "0"  # KMR_HUGE_PAGES=0 turns the huge-page hint off


def empty_out(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for a kernel's output, backed by transparent huge pages where Linux offers them.

    Why: a large fresh allocation (glibc maps anything over its mmap threshold, at most 32 MiB,
    afresh on every call) is mapped page by page on first write, and in a VM those 4 KiB page
    faults cost more than the write itself. At 100M parameters (AMD EPYC, quiet), the quantization
    kernel took 0.087 s writing into pre-touched outputs and 0.25 s into fresh ones; a ``clone()``
    took 0.15 s against 0.03 s for the same copy into touched memory.

    So, on CPU, an output of 4 MiB or more gets ``madvise(MADV_HUGEPAGE)`` over its 2 MiB-aligned
    interior where transparent huge pages are in ``madvise`` or ``always`` mode: the workers'
    first writes then fault once per 2 MiB, in parallel, as they write their chunks. Measured
    (100M, quiet, ``python -m kmr_ref.bench.worker --interleave quant_per_channel 100000000 8 2
    cpu ours,copy``, medians of 8): quantization 0.14 s with the hint and no touch, 0.17-0.19 s
    with the hint and a touch of every page on the calling thread first (with stalls of 0.5-1.2 s
    in one round of eight, as the kernel compacted memory for the huge pages inside that serial
    touch), 0.22 s without the hint; ``clone()`` 0.10-0.12 s. The pruning kernel (medians of 6):
    0.27 s against 0.29 s with the touch. ``KMR_HUGE_PAGES=0`` turns the hint off. It changes no value the
    kernel returns (every entry is written)."""
    t = torch.empty(tuple(shape), dtype=dtype, device=device)
    nbytes = t.numel() * t.element_size()
    if device.type != "cpu" or nbytes < 2 * _HUGE:
        return t
    madvise = _madvise() if HUGE_PAGES else None
    if madvise is not None:
        p = t.data_ptr()
        a, e = (p + _HUGE - 1) & ~(_HUGE - 1), (p + nbytes) & ~(_HUGE - 1)
        if e > a:
            madvise(a, e - a, _MADV_HUGEPAGE)  # a hint: on failure (EINVAL, ENOMEM), 4 KiB pages as before
    return t


def workers_for(device: torch.device, workers: int | None = None) -> int:
    """Worker threads for a kernel call: ``workers`` if given; else torch's intra-op thread count,
    bounded by the cores this process may run on; 1 on accelerators. Other processes' load is not
    consulted: the workers take chunks dynamically and meet at no barrier but the final join, so a
    descheduled worker delays only its own chunk, and on a loaded machine each thread of ours gets
    its share of the cores, as each of torch's OpenMP threads does. Two workers faulting fresh
    output pages at once can stall in the OS (``kmr bench``'s ``system_s``; docs/results/bench.md):
    ``workers=1`` avoids that."""
    if device.type != "cpu":
        return 1
    if workers is not None:
        return max(1, workers)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(caller_threads(), cores))


def caller_threads() -> int:
    """The intra-op thread count of the kernel's caller (inside :func:`one_thread`, the count before
    it was set to 1)."""
    return getattr(_caller, "threads", None) or torch.get_num_threads()


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count is ``n`` inside the block and restored after, also on error."""
    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old or old != n:
            torch.set_num_threads(old)


_caller = threading.local()


def one_thread(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a kernel entry point with one intra-op thread (restored after): its glue ops between
    the passes are small, and small multi-threaded ops are what a busy machine punishes."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        outer = getattr(_caller, "threads", None)
        if outer is None:  # the outermost entry point: remember the caller's count for workers_for
            _caller.threads = torch.get_num_threads()
        try:
            with intra_op_threads(1):
                return fn(*args, **kwargs)
        finally:
            _caller.threads = outer

    return wrapper


class Scratch:
    """One worker's reusable buffers (allocated once per call, grown never: sized for a chunk)."""

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}
        self.state: dict[str, Any] = {}

    def buf(self, name: str, n: int, dtype: torch.dtype, device: torch.device, cap: int) -> torch.Tensor:
        b = self._bufs.get(name)
        if b is None or b.dtype != dtype or b.numel() < n:
            b = torch.empty(max(n, cap), dtype=dtype, device=device)
            self._bufs[name] = b
        return b[:n]


def map_chunks(fn: Callable[[T, Scratch], R], items: Sequence[T], workers: int) -> tuple[list[R], list[Scratch]]:
    """``[fn(item, scratch) for item in items]`` (results in item order) on ``workers`` threads
    that take items dynamically, each op with one intra-op thread; also returns every worker's
    :class:`Scratch` (its ``state`` holds per-worker accumulators). The calling thread is one of
    the workers; an exception in any worker stops the others and is re-raised here."""
    results: list[Any] = [None] * len(items)
    scratches = [Scratch() for _ in range(max(1, min(workers, len(items))))]
    if len(scratches) == 1:
        with intra_op_threads(1):
            for j, it in enumerate(items):
                results[j] = fn(it, scratches[0])
        return results, scratches
    counter = itertools.count()
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(s: Scratch) -> None:
        try:
            while not stop.is_set():
                j = next(counter)  # atomic under the GIL
                if j >= len(items):
                    return
                results[j] = fn(items[j], s)
        except BaseException as e:  # re-raised in the calling thread
            errors.append(e)
            stop.set()

    def worker(s: Scratch) -> None:
        torch.set_num_threads(1)  # this thread's ops stay on this thread
        loop(s)

    old = torch.get_num_threads()
    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in scratches[1:]]
    try:
        with intra_op_threads(1):
            for t in threads:
                t.start()
            loop(scratches[0])
    finally:
        stop.set()  # normal end: every item is already taken; on error or Ctrl-C: stop the rest
        for t in threads:
            t.join()
        torch.set_num_threads(old)  # the process-wide default the workers changed
    if errors:
        raise errors[0]
    return results, scratches
