"""Progress from work that reports through a callback, as a steps generator.

Library loops that take no generator (MONAI's sliding windows, a training loop) report through a
callback; the GUI and CLI consume ``(done, total, message)`` yields (see ``methods.cardiac.drain``).
:func:`progress_from_thread` runs such work in a worker thread and yields its reports.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Generator

Report = Callable[[int, int, str], None]


def progress_from_thread(work: Callable[[Report], Any]) -> Generator[tuple[int, int, str], None, Any]:
    """Run ``work(report)`` in a daemon thread; yield each ``report(done, total, message)`` call
    and return what ``work`` returns (its exception is raised here, in the caller's thread).

    Cancellation is the work's own business (e.g. raising ``InterruptedError`` when a
    ``cancelled()`` callable says so): the thread cannot be killed from outside.
    """
    reports: queue.Queue = queue.Queue()
    out: dict[str, Any] = {}
    done = object()

    def run():
        try:
            out["value"] = work(lambda *step: reports.put(step))
        except BaseException as e:  # re-raised in the caller's thread
            out["error"] = e
        finally:
            reports.put(done)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while (step := reports.get()) is not done:
        yield step
    worker.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


__all__ = ["progress_from_thread"]
