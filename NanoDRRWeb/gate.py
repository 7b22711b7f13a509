"""Run a render on a worker thread while the event loop keeps serving the page, never both on MRML.

MRML and VTK are not thread-safe, but a render that blocks the event loop would freeze the page: no
progress, no Cancel. :class:`SceneGate` hands the scene back and forth: the worker owns it from the start
of the call until the logic reports a "compute" stage (:func:`NanoDRRLib.workflow.renderStage`: the engine
runs, no node is read or written), the event loop owns it during compute stages, and the worker takes it
back at the next "scene" report (the loop thread then waits, blocked, inside one callback) and keeps it
until the call returns. Views are not rendered by the worker: trame-slicer schedules their renders on the
loop, which runs them once it owns the scene again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from NanoDRRLib.workflow import renderStage


class SceneGate:
    """Who may touch the scene: the event loop (``owner == "loop"``) or the render worker."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self.owner = "loop"

    # on the loop thread
    def lendToWorker(self) -> None:
        """Give the scene to the worker and block until it gives it back."""
        with self._cv:
            self.owner = "worker"
            self._cv.notify_all()
            self._cv.wait_for(lambda: self.owner == "loop")

    # on the worker thread
    def waitForScene(self) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self.owner == "worker")

    def giveBack(self) -> None:
        with self._cv:
            if self.owner == "worker":
                self.owner = "loop"
                self._cv.notify_all()

    def takeBack(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ask the loop to lend the scene again and wait until it has."""
        with self._cv:
            if self.owner == "worker":
                return
        loop.call_soon_threadsafe(self.lendToWorker)
        self.waitForScene()


async def runGated(
    task: Callable[[Callable[[float, str], None]], object],
    onProgress: Callable[[float, str], None] | None = None,
):
    """``task(progress)`` on a worker thread, the scene handed over by stage; returns or raises its outcome.

    ``progress(fraction, message)`` is what ``task`` passes to the workflow's render; ``onProgress`` runs on
    the loop thread.
    """
    loop = asyncio.get_running_loop()
    gate = SceneGate()
    done = loop.create_future()

    def progress(fraction: float, message: str = "") -> None:
        if renderStage(message) == "compute":
            gate.giveBack()
        else:
            gate.takeBack(loop)
        if onProgress is not None:
            loop.call_soon_threadsafe(onProgress, fraction, message)

    def work() -> None:
        gate.waitForScene()
        outcome, error = None, None
        try:
            outcome = task(progress)
        except BaseException as e:  # re-raised on the loop thread
            error = e
        finally:
            gate.giveBack()
        loop.call_soon_threadsafe(_settle, done, outcome, error)

    thread = threading.Thread(target=work, name="NanoDRR render", daemon=True)
    thread.start()
    gate.lendToWorker()  # blocks until the worker reaches a compute stage (or finishes)
    return await done


def _settle(future: asyncio.Future, outcome, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(outcome)
