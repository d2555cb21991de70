"""Run a function in a fresh process and report its seconds and peak resident memory."""

from __future__ import annotations

import multiprocessing as mp
import resource
import time


def _child(fn, args, q):
    import gc

    gc.collect()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    extra = fn(*args)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q.put((seconds, peak / 1024.0, (peak - base) / 1024.0, extra))


def measure(fn, *args):
    """``(seconds, peak_rss_MiB, peak_growth_MiB, fn's return)`` of ``fn(*args)`` in a new process.

    ``fn`` should do its own imports and warm-up before the part it wants timed, and may return
    extra figures. Peak RSS is the process high-water mark (Linux ru_maxrss, KiB).
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q))
    p.start()
    out = q.get()
    p.join()
    return out
