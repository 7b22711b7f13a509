"""The web app in chromium: views stream, Render matches the engine, sliders and 3D handles move the C-arm,
bad input is refused with a message and changes nothing, the server outlives a closed browser.

References: the engine rendering the phantom the app starts on (NanoDRRWeb.data) from the pose the server
reports, the DICOM source positions of docs/geometry.md by hand, and the pixels read from the server
(/nanodrr/drr.npy), never the streamed JPEG.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from webtestutils import (
    engineDRR,
    expectedSource,
    fetchDRR,
    openApp,
    phantom,
    saveArtifact,
    state,
    viewImages,
    waitState,
)


@pytest.fixture(scope="module")
def ct():
    return phantom()


@pytest.fixture
def page(server, browser):
    page = openApp(browser, server.url)
    page.evaluate("() => window.trame.state.set('error', '')")  # one from an earlier test
    if state(page, "live"):
        page.locator("#live").click()
        waitState(page, "!s.get('live')")
    yield page
    page.close()
    assert server.alive(), "the server stopped:\n" + "".join(server.log[-30:])


def drrCount(page) -> int:
    return state(page, "drr")["count"]


def test_page_loads_and_views_stream_images(page, server):
    threeD, drr = viewImages(page)
    for img in (threeD, drr):
        assert img.evaluate("i => i.naturalWidth * i.naturalHeight") > 100 * 100
    assert page.locator("#ct-name").inner_text() == "CT: Chest phantom"
    # the views are images of something: not one flat colour
    from io import BytesIO

    from PIL import Image

    for name, img in (("3d", threeD), ("drr", drr)):
        a = np.asarray(Image.open(BytesIO(img.screenshot())).convert("L"), dtype=float)
        assert a.std() > 10, f"the {name} view looks empty"
    assert saveArtifact(page, "page_loaded").exists()


def test_render_shows_the_engine_drr_of_the_pose(page, server, ct):
    vol, voxelToWorld, center = ct
    page.locator("#reset-carm").click()
    waitState(page, "s.get('primary') === 0 && s.get('secondary') === 0 && s.get('sod') === 850")
    before = drrCount(page)
    page.locator("#render").click()
    waitState(page, f"s.get('drr').count > {before} && !s.get('busy')")
    assert page.locator("#status").inner_text() == "Done."
    image, info = fetchDRR(server.url)
    assert info["count"] == state(page, "drr")["count"]
    rt = np.asarray(info["rtInv"]).reshape(4, 4)
    np.testing.assert_allclose(rt[:3, 3], expectedSource(center, 0.0, 0.0, 850.0), atol=1e-6)
    assert image.shape == (256, 256)
    ref = engineDRR(vol, voxelToWorld, rt, info["geometry"])
    np.testing.assert_allclose(image, ref, rtol=1e-5, atol=1e-5)
    assert image.max() > 1.0  # the phantom is there
    saveArtifact(page, "render")


def test_a_carm_slider_moves_the_carm_and_the_drr(page, server, ct):
    vol, voxelToWorld, center = ct
    page.locator("#reset-carm").click()
    waitState(page, "s.get('primary') === 0")
    page.locator("#live").click()
    waitState(page, "s.get('live')")
    before = drrCount(page)
    thumb = page.locator(".v-input:has(#slider-primary) .v-slider-thumb")
    thumb.focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    waitState(page, f"s.get('primary') === 5 && s.get('drr').count > {before}")
    page.wait_for_function(
        "() => window.trame.state.get('drr').rtInv && Math.abs(window.trame.state.get('drr').rtInv[3]"
        f" - ({float(expectedSource(center, 5.0, 0.0, 850.0)[0])})) < 1e-6",
        timeout=20000,
    )
    image, info = fetchDRR(server.url)
    rt = np.asarray(info["rtInv"]).reshape(4, 4)
    np.testing.assert_allclose(rt[:3, 3], expectedSource(center, 5.0, 0.0, 850.0), atol=1e-6)
    np.testing.assert_allclose(
        image, engineDRR(vol, voxelToWorld, rt, info["geometry"]), rtol=1e-5, atol=1e-5
    )
    saveArtifact(page, "slider_lao5")


def _handlePixels(img) -> tuple[np.ndarray, np.ndarray]:
    """Screen positions (page px) of the 3D view's saturated red/green/blue rotation-ring pixels."""
    from io import BytesIO

    from PIL import Image

    box = img.bounding_box()
    a = np.asarray(Image.open(BytesIO(img.screenshot())).convert("RGB"), dtype=int)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    rings = (
        ((r > 150) & (g < 110) & (b < 110))
        | ((g > 150) & (r < 110) & (b < 110))
        | ((b > 150) & (r < 110) & (g < 110))
    )
    ys, xs = np.nonzero(rings)
    sx, sy = box["width"] / a.shape[1], box["height"] / a.shape[0]
    return box["x"] + xs * sx, box["y"] + ys * sy


def test_dragging_a_carm_handle_in_3d_rerenders(page, server):
    page.locator("#reset-carm").click()
    waitState(page, "s.get('primary') === 0")
    page.locator("#live").click()
    waitState(page, "s.get('live')")
    threeD, _ = viewImages(page)
    xs, ys = _handlePixels(threeD)
    assert xs.size > 50, "no rotation handles visible in the 3D view"
    cx, cy = xs.mean(), ys.mean()
    far = np.argmax((xs - cx) ** 2 + (ys - cy) ** 2)  # a ring pixel at the outside of the handles
    x, y = float(xs[far]), float(ys[far])
    before, rt0 = drrCount(page), state(page, "drr")["rtInv"]
    tx, ty = -(y - cy), x - cx  # drag along the ring (tangent)
    norm = float(np.hypot(tx, ty)) or 1.0
    page.mouse.move(x, y)
    time.sleep(0.5)  # hover: the handle highlights, so the press grabs it
    page.mouse.move(x + 1, y)
    time.sleep(0.3)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x + 6 * step * tx / norm, y + 6 * step * ty / norm)
        time.sleep(0.05)
    page.mouse.up()
    waitState(page, f"s.get('drr').count > {before}", timeout=20)
    page.wait_for_function(
        f"() => JSON.stringify(window.trame.state.get('drr').rtInv) !== '{__import__('json').dumps(rt0)}'",
        timeout=20000,
    )
    rt = np.asarray(state(page, "drr")["rtInv"]).reshape(4, 4)
    assert not np.allclose(rt, np.asarray(rt0).reshape(4, 4)), "the C-arm did not move"
    np.testing.assert_allclose(rt[:3, :3].T @ rt[:3, :3], np.eye(3), atol=1e-6)  # still a rotation
    saveArtifact(page, "handle_drag")


@pytest.mark.parametrize(
    ("selector", "value", "message"),
    [
        ("#field-delx", "-1", "geometry.delx"),
        ("#field-rows", "0", "geometry.height"),
        ("#field-sdd", "500", "sod"),
    ],
)
def test_bad_detector_value_shows_an_error_and_changes_nothing(page, server, selector, value, message):
    before, rows, sdd = drrCount(page), state(page, "rows"), state(page, "sdd")
    field = page.locator(selector)
    field.fill(value)
    field.press("Tab")
    page.locator("#error").wait_for(timeout=10000)
    assert message in page.locator("#error").inner_text()
    waitState(page, f"s.get('rows') == {rows} && s.get('sdd') == {sdd}")
    assert drrCount(page) == before
    saveArtifact(page, f"bad_{message.replace('.', '_')}")


def test_bad_upload_shows_an_error_and_changes_nothing(page, server, tmp_path):
    before, name = drrCount(page), page.locator("#ct-name").inner_text()
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a volume" * 10)
    page.locator("#upload-ct").set_input_files(str(bad))
    page.wait_for_function(
        "() => document.querySelector('#error') && document.querySelector('#error').innerText.includes('broken.nii.gz')",
        timeout=30000,
    )
    wrong = tmp_path / "notes.txt"
    wrong.write_text("hello")
    page.locator("#error .v-alert__close button, #error button").first.click()
    page.locator("#upload-ct").set_input_files(str(wrong))
    page.wait_for_function(
        "() => document.querySelector('#error') && document.querySelector('#error').innerText.includes('notes.txt')",
        timeout=30000,
    )
    assert page.locator("#ct-name").inner_text() == name and drrCount(page) == before
    saveArtifact(page, "bad_upload")


def test_upload_a_ct_renders_it(page, server, tmp_path, ct):
    """A valid NRRD from the browser becomes the session's CT and is rendered (against the engine)."""
    import SimpleITK as sitk

    vol, voxelToWorld, _ = ct
    small = vol[::2, ::2, ::2].copy()
    spacing = np.linalg.norm(voxelToWorld[:3, :3], axis=0) * 2
    img = sitk.GetImageFromArray(small)
    img.SetSpacing([float(v) for v in spacing])
    path = tmp_path / "small_ct.nrrd"
    sitk.WriteImage(img, str(path))
    before = drrCount(page)
    page.locator("#upload-ct").set_input_files(str(path))
    page.wait_for_function(
        "() => document.querySelector('#ct-name').innerText === 'CT: small_ct'", timeout=60000
    )
    waitState(page, f"s.get('drr').count > {before} && !s.get('busy')", timeout=60)
    image, info = fetchDRR(server.url)
    # the NRRD's LPS origin (0) and axes become RAS with the first two axes flipped
    toWorld = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    ref = engineDRR(small, toWorld, np.asarray(info["rtInv"]).reshape(4, 4), info["geometry"])
    np.testing.assert_allclose(image, ref, rtol=1e-5, atol=1e-5)
    assert page.locator("#seg-name").inner_text() == "Segmentation: none"


def test_the_server_survives_a_closed_browser(server, browser):
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url)
    page.wait_for_selector("img.image-display-area", timeout=60000)
    context.close()  # the browser goes away mid-session
    time.sleep(1.0)
    assert server.alive()
    again = openApp(browser, server.url)
    assert drrCount(again) > 0
    again.close()


def test_register_a_drr_of_a_known_pose_in_the_page(page, server):
    """Registration section: the DRR at 20° LAO becomes the X-ray, the C-arm is moved to 24°, Register
    brings it back to 20° (the pose the X-ray was rendered at), shows the overlay; Undo returns to 24°.
    (The session's CT is whatever an earlier test left: the references are read from the server.)"""
    page.locator("#reset-carm").click()
    waitState(page, "s.get('primary') === 0")
    page.evaluate("() => window.trame.state.set('primary', 20)")  # what the slider sends
    waitState(page, "s.get('primary') === 20")
    before = drrCount(page)
    page.locator("#render").click()
    waitState(page, f"s.get('drr').count > {before} && !s.get('busy')")
    xrayImage, first = fetchDRR(server.url)
    truth = np.asarray(first["rtInv"]).reshape(4, 4)  # the pose the X-ray is rendered at
    page.locator("#xray-from-drr").click()
    waitState(page, "s.get('xray_name') !== ''")
    assert page.locator("#xray-name").inner_text().startswith("X-ray: X-ray (DRR")
    page.evaluate("() => window.trame.state.set('primary', 24)")
    waitState(page, "s.get('primary') === 24")
    page.locator("#register").click()
    waitState(page, "s.get('similarity') !== '' && !s.get('busy')", timeout=180)
    assert abs(state(page, "primary") - 20.0) < 0.5 and abs(state(page, "secondary")) < 0.5
    assert page.locator("#similarity").inner_text().startswith("Similarity: ")
    waitState(page, "s.get('drr').overlayShown === true", timeout=60)
    image, info = fetchDRR(server.url)
    rt = np.asarray(info["rtInv"]).reshape(4, 4)
    assert np.abs(rt[:3, 3] - truth[:3, 3]).max() < 10.0  # the source within 1 cm (from ~60 mm)
    assert info["registration"]["similarityAfter"] > info["registration"]["similarityBefore"]
    assert info["count"] > first["count"]  # re-rendered at the registered pose: it matches the X-ray
    assert np.abs(image - xrayImage).mean() < 0.02 * np.abs(xrayImage).mean()
    saveArtifact(page, "registered_overlay")
    page.locator("#undo-registration").click()
    waitState(page, "Math.abs(s.get('primary') - 24) < 1e-6 && !s.get('can_undo')", timeout=60)


def test_bad_xray_upload_shows_an_error(page, server, tmp_path):
    name = page.locator("#xray-name").inner_text()
    wrong = tmp_path / "scan.jpg"
    wrong.write_bytes(b"not an image")
    page.locator("#upload-xray").set_input_files(str(wrong))
    page.wait_for_function(
        "() => document.querySelector('#error') && document.querySelector('#error').innerText.includes('scan.jpg')",
        timeout=30000,
    )
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM but not really" * 8)
    page.locator("#error .v-alert__close button, #error button").first.click()
    page.locator("#upload-xray").set_input_files(str(broken))
    page.wait_for_function(
        "() => document.querySelector('#error') && document.querySelector('#error').innerText.includes('broken.dcm')",
        timeout=30000,
    )
    assert page.locator("#xray-name").inner_text() == name
