"""LiveRenderController under failure and re-entrancy: nothing escapes an observer, errors are kept in
``lastError`` and logged once, and updates arriving during a render (or from ``onRendered``) cost one
follow-up render of the latest state, never a nested one."""

from __future__ import annotations

import inspect
import logging

import numpy as np
import pytest
from NanoDRRLib import LiveRenderController, NanoDRRError
from slicer_testutils import drrArray, engineRender, poseOf, vtkMatrix

N = 16  # samples per ray: the references are rendered with the same count


class Collector:
    """A ``schedule`` that defers callbacks until the test runs them (like a Qt single-shot timer)."""

    def __init__(self) -> None:
        self.callbacks = []

    def __call__(self, callback) -> None:
        self.callbacks.append(callback)

    def runAll(self, limit: int = 50) -> int:
        n = 0
        while self.callbacks and n < limit:
            self.callbacks.pop(0)()
            n += 1
        return n


def _failing(exc):
    def render(*args, **kwargs):
        raise exc

    return render


def _liveRecords(caplog):
    return [r for r in caplog.records if "live" in r.getMessage().lower()]


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("engine: rays and volume disagree"),
        np.linalg.LinAlgError("Singular matrix"),
        MemoryError("cannot allocate 40 GB"),
        RuntimeError("CUDA out of memory"),
    ],
    ids=["ValueError", "LinAlgError", "MemoryError", "RuntimeError"],
)
def test_any_failure_of_an_event_render_is_recorded_and_logged_once(
    scene, logic, ct, geometry, exc, monkeypatch, caplog, capfd
):
    carm = logic.createCArmTransform(ct)
    live = LiveRenderController(logic, ct, carm, geometry, nSamples=N, previewScale=1.0)
    live.start()
    assert live.lastError is None and live.renderCount == 1
    good = logic.render
    monkeypatch.setattr(logic, "render", _failing(exc))
    caplog.set_level(logging.WARNING)
    for primary in (5.0, 10.0, 15.0):  # three events, same failure
        logic.setCArmAngles(carm, ct, primary, 0.0, 850.0)  # must not raise out of the observer
    assert isinstance(live.lastError, NanoDRRError)
    assert type(exc).__name__ in str(live.lastError) and str(exc) in str(live.lastError)
    assert live.lastError.__cause__ is exc
    assert live.renderCount == 1 and live.isActive
    assert len(_liveRecords(caplog)) == 1  # logged once, not once per event
    assert "Traceback" not in capfd.readouterr().err

    monkeypatch.setattr(logic, "render", good)
    logic.setCArmAngles(carm, ct, 20.0, 0.0, 850.0)
    assert live.lastError is None and live.renderCount == 2
    monkeypatch.setattr(logic, "render", _failing(exc))
    logic.setCArmAngles(carm, ct, 25.0, 0.0, 850.0)
    assert len(_liveRecords(caplog)) == 2  # a success in between: the same error is news again
    live.stop()


def test_a_changed_error_is_logged_again(scene, logic, ct, geometry, monkeypatch, caplog):
    carm = logic.createCArmTransform(ct)
    live = LiveRenderController(logic, ct, carm, geometry, nSamples=N, previewScale=1.0)
    live.start()
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(logic, "render", _failing(ValueError("first")))
    logic.setCArmAngles(carm, ct, 5.0, 0.0, 850.0)
    logic.setCArmAngles(carm, ct, 6.0, 0.0, 850.0)
    monkeypatch.setattr(logic, "render", _failing(ValueError("second")))
    logic.setCArmAngles(carm, ct, 7.0, 0.0, 850.0)
    assert [("first" in r.getMessage(), "second" in r.getMessage()) for r in _liveRecords(caplog)] == [
        (True, False),
        (False, True),
    ]
    live.stop()


def test_real_bad_live_settings_fail_in_flush_and_finalize_without_escaping(
    scene, logic, ct, geometry, caplog
):
    """No monkeypatching: settings documented as changeable while live, set wrong (a misspelled render
    option is a TypeError inside logic.render, a geometry that is not a CArmGeometry an AttributeError
    in the preview's scaling)."""
    carm = logic.createCArmTransform(ct)
    schedule = Collector()
    live = LiveRenderController(logic, ct, carm, geometry, nSamples=N, previewScale=0.5, schedule=schedule)
    live.start()
    caplog.set_level(logging.WARNING)
    live.renderOptions = {"muBnoe": 0.05}
    logic.setCArmAngles(carm, ct, 10.0, 0.0, 850.0)
    assert schedule.runAll() == 1  # the flush fails inside the scheduled callback, not out of it
    assert isinstance(live.lastError, NanoDRRError) and "TypeError" in str(live.lastError)
    assert "muBnoe" in str(live.lastError)
    assert live.finalize() is False  # the full-resolution render fails the same way: not logged again
    assert len(_liveRecords(caplog)) == 1
    live.renderOptions = {}
    live.geometry = geometry.toDict()
    logic.setCArmAngles(carm, ct, 20.0, 0.0, 850.0)
    schedule.runAll()
    assert isinstance(live.lastError, NanoDRRError) and "AttributeError" in str(live.lastError)
    assert len(_liveRecords(caplog)) == 2
    live.geometry = geometry
    assert live.finalize() and live.lastError is None and not live.isPreview and live.renderCount == 2
    live.stop()


def test_start_wraps_unexpected_errors_into_a_named_nanodrr_error(scene, logic, ct, geometry, monkeypatch):
    carm = logic.createCArmTransform(ct)
    monkeypatch.setattr(logic, "render", _failing(np.linalg.LinAlgError("Singular matrix")))
    live = LiveRenderController(logic, ct, carm, geometry, nSamples=N)
    with pytest.raises(NanoDRRError, match=r"LinAlgError.*Singular matrix") as info:
        live.start()
    assert isinstance(info.value.__cause__, np.linalg.LinAlgError)
    assert not live.isActive and live.lastError is info.value


def test_a_failing_onrendered_callback_is_recorded_not_raised(scene, logic, ct, geometry, caplog, capfd):
    carm = logic.createCArmTransform(ct)

    def onRendered(node):
        raise RuntimeError("display update failed")

    live = LiveRenderController(
        logic, ct, carm, geometry, nSamples=N, previewScale=1.0, onRendered=onRendered
    )
    caplog.set_level(logging.WARNING)
    live.start()  # the render worked: start does not raise, the callback's failure is kept
    assert live.isActive and live.renderCount == 1
    assert isinstance(live.lastError, NanoDRRError) and "onRendered" in str(live.lastError)
    logic.setCArmAngles(carm, ct, 10.0, 0.0, 850.0)
    logic.setCArmAngles(carm, ct, 20.0, 0.0, 850.0)
    assert live.renderCount == 3 and "display update failed" in str(live.lastError)
    assert len(_liveRecords(caplog)) == 1
    assert "Traceback" not in capfd.readouterr().err
    live.stop()


@pytest.mark.parametrize("scheduled", [False, True], ids=["synchronous", "scheduled"])
def test_onrendered_that_moves_the_carm_gets_one_follow_up_per_move_not_recursion(
    scene, logic, ct, ctArray, ctAffine, geometry, scheduled
):
    carm = logic.createCArmTransform(ct)
    targets = [30.0, 60.0, 90.0]
    depth = {"now": 0, "max": 0}
    stacks = []
    schedule = Collector() if scheduled else None
    real = logic.render

    def counting(*args, **kwargs):
        depth["now"] += 1
        depth["max"] = max(depth["max"], depth["now"])
        stacks.append(len(inspect.stack(0)))
        try:
            return real(*args, **kwargs)
        finally:
            depth["now"] -= 1

    logic.render = counting

    def onRendered(node):
        if targets:
            logic.setCArmAngles(carm, ct, targets.pop(0), 0.0, 850.0)

    live = LiveRenderController(
        logic, ct, carm, geometry, nSamples=N, previewScale=1.0, schedule=schedule, onRendered=onRendered
    )
    live.start()
    logic.setCArmAngles(carm, ct, 10.0, 0.0, 850.0)  # the start render's move is coalesced with this one
    if scheduled:
        schedule.runAll()
    assert not targets and depth["max"] == 1
    assert len(set(stacks[1:])) == 1, stacks  # follow-ups run at the same depth: a loop, not recursion
    assert live.renderCount == 4 and live.lastError is None  # start + one follow-up per move
    np.testing.assert_allclose(
        drrArray(live.outputNode),
        engineRender(ctArray, ctAffine, poseOf(carm), geometry, nSamples=N)[0],
        rtol=1e-6,
        atol=1e-6,
    )
    live.stop()


def test_a_move_during_the_render_is_coalesced_into_one_follow_up(
    scene, logic, ct, ctArray, ctAffine, geometry
):
    carm = logic.createCArmTransform(ct)
    live = LiveRenderController(logic, ct, carm, geometry, nSamples=N, previewScale=1.0)
    live.start()
    real = logic.render
    moves = [40.0, 41.0, 42.0]
    calls = []

    def movingDuringRender(*args, **kwargs):
        calls.append(poseOf(carm))
        out = real(*args, **kwargs)
        while moves:  # three changes while the first event's render runs
            logic.setCArmAngles(carm, ct, moves.pop(0), 0.0, 850.0)
        return out

    logic.render = movingDuringRender
    logic.setCArmAngles(carm, ct, 20.0, 0.0, 850.0)
    assert len(calls) == 2 and live.renderCount == 3  # start, the event, one follow-up for three moves
    np.testing.assert_allclose(
        drrArray(live.outputNode),
        engineRender(ctArray, ctAffine, poseOf(carm), geometry, nSamples=N)[0],
        rtol=1e-6,
        atol=1e-6,
    )
    live.stop()


def test_onrendered_that_always_moves_the_carm_is_bounded(scene, logic, ct, geometry, caplog):
    carm = logic.createCArmTransform(ct)
    angle = [0.0]

    def restless(node):
        angle[0] = (angle[0] + 1.0) % 90.0
        logic.setCArmAngles(carm, ct, angle[0], 0.0, 850.0)

    live = LiveRenderController(logic, ct, carm, geometry, nSamples=4, previewScale=1.0, onRendered=restless)
    caplog.set_level(logging.WARNING)
    live.start()
    logic.setCArmAngles(carm, ct, 45.0, 0.0, 850.0)
    assert 2 < live.renderCount <= 2 + LiveRenderController.MAX_FOLLOW_UPS
    assert isinstance(live.lastError, NanoDRRError) and "follow-up" in str(live.lastError)
    live.stop()


def test_an_error_callback_sees_each_new_error_once(scene, logic, ct, geometry):
    carm = logic.createCArmTransform(ct)
    errors = []
    live = LiveRenderController(
        logic, ct, carm, geometry, nSamples=N, previewScale=1.0, onError=errors.append
    )
    live.start()
    bad = vtkMatrix(poseOf(carm) @ np.diag([2.0, 2.0, 2.0, 1.0]))
    carm.SetMatrixTransformToParent(bad)
    carm.SetMatrixTransformToParent(vtkMatrix(poseOf(carm) @ np.diag([1.0, 1.0, 1.0, 1.0])))  # same again
    assert len(errors) == 1 and str(errors[0]) == str(live.lastError) and "rigid" in str(errors[0])
    logic.setCArmAngles(carm, ct, 0.0, 0.0, 850.0)
    assert live.lastError is None and len(errors) == 1
    with pytest.raises(NanoDRRError, match="onError"):
        LiveRenderController(logic, ct, carm, geometry, onError=5)
    live.stop()
