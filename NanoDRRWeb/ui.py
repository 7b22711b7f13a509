"""The page: controls in a drawer (data, C-arm, detector, rendering, output), the two views beside them."""

from __future__ import annotations

from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3

from .uploads import VOLUME_EXTENSIONS, XRAY_EXTENSIONS

#: JS: send the chosen file to the server unless it is over the size limit (the server checks again).
_UPLOAD = (
    "if (!$event.target.files.length) {{}} else if ($event.target.files[0].size > max_upload_mb * 1048576) {{"
    " error = `{role}: ${{$event.target.files[0].name}} is ${{($event.target.files[0].size / 1048576).toFixed(1)}}"
    " MB; the limit is ${{max_upload_mb}} MB`; error_count += 1; }} else {{ trigger('{trigger}', [$event.target.files]); }}"
)


def _number(label: str, key: str, **kw):
    v3.VTextField(
        label=label, v_model=(key,), type="number", density="compact", hide_details=True,
        classes="mb-2", id=f"field-{key}", disabled=("busy",), **kw,
    )  # fmt: skip


def _slider(label: str, key: str, lo: float, hi: float, step: float):
    v3.VSlider(
        label=label, v_model=(key,), min=lo, max=hi, step=step, density="compact", hide_details=True,
        thumb_label=True, id=f"slider-{key}", disabled=("busy || !has_carm",), classes="mb-1",
    )  # fmt: skip


def build(server, viewer) -> None:
    ctrl = server.controller
    accept = ",".join(VOLUME_EXTENSIONS)
    with SinglePageWithDrawerLayout(server, full_height=True) as layout:
        client.Style("html { overflow-y: auto; } .v-navigation-drawer { width: 360px !important; }")
        layout.title.set_text("NanoDRR")
        with layout.toolbar:
            v3.VSpacer()
            html.Div("{{ status }}", id="status", classes="text-body-2 mr-4")
            v3.VBtn("Reset views", click=ctrl.reset_views, variant="text", id="reset-views")
        with layout.drawer:
            with v3.VContainer(classes="pa-2"):
                v3.VAlert(
                    "{{ error }}", v_if=("error",), type="error", density="compact", closable=True,
                    id="error", classes="mb-2", click_close=ctrl.clear_error,
                )  # fmt: skip
                with v3.VCard(title="Data", density="compact", classes="mb-2"):
                    with v3.VCardText():
                        html.Div("CT: {{ ct_name }}", id="ct-name")
                        html.Div("Segmentation: {{ seg_name || 'none' }}", id="seg-name", classes="mb-2")
                        html.Div(
                            f"Upload ({', '.join(VOLUME_EXTENSIONS)}, at most {{{{ max_upload_mb }}}} MB):"
                        )
                        html.Label("CT ", classes="text-caption")
                        html.Input(
                            type="file", accept=accept, id="upload-ct", disabled=("busy",),
                            change=_UPLOAD.format(role="ct", trigger=ctrl.trigger_name(ctrl.upload_ct)),
                        )  # fmt: skip
                        html.Br()
                        html.Label("Segmentation ", classes="text-caption")
                        html.Input(
                            type="file", accept=accept, id="upload-seg", disabled=("busy",),
                            change=_UPLOAD.format(
                                role="segmentation", trigger=ctrl.trigger_name(ctrl.upload_seg)
                            ),
                        )  # fmt: skip
                with v3.VCard(title="C-arm", density="compact", classes="mb-2"):
                    with v3.VCardText():
                        _slider("LAO(+)/RAO(−)", "primary", -180, 180, 1)
                        _slider("CRAN(+)/CAUD(−)", "secondary", -90, 90, 1)
                        _slider("SOD (mm)", "sod", 100, 2000, 5)
                        with html.Div(classes="d-flex ga-2 mt-1"):
                            v3.VBtn("Create C-arm", click=ctrl.create_carm, size="small", id="create-carm",
                                    disabled=("busy",))  # fmt: skip
                            v3.VBtn("Reset", click=ctrl.reset_carm, size="small", id="reset-carm",
                                    disabled=("busy",))  # fmt: skip
                        v3.VCheckbox(label="Show geometry and handles in 3D", v_model=("show_geometry",),
                                     density="compact", hide_details=True, id="show-geometry")  # fmt: skip
                with v3.VCard(title="Detector", density="compact", classes="mb-2"):
                    with v3.VCardText():
                        v3.VSelect(label="Preset", v_model=("preset",), items=("presets",), density="compact",
                                   hide_details=True, classes="mb-2", id="preset", disabled=("busy",))  # fmt: skip
                        with v3.VRow(dense=True):
                            for label, key in (("Rows", "rows"), ("Columns", "columns")):
                                with v3.VCol(cols=6):
                                    _number(label, key)
                            for label, key in (("Δx (mm)", "delx"), ("Δy (mm)", "dely")):
                                with v3.VCol(cols=6):
                                    _number(label, key, step=0.1)
                            for label, key in (("x0 (mm)", "x0"), ("y0 (mm)", "y0")):
                                with v3.VCol(cols=6):
                                    _number(label, key)
                            with v3.VCol(cols=6):
                                _number("SDD (mm)", "sdd")
                with v3.VCard(title="Rendering", density="compact", classes="mb-2"):
                    with v3.VCardText():
                        v3.VSelect(label="Sampling", v_model=("method",), items=("methods",), density="compact",
                                   hide_details=True, classes="mb-2", id="method", disabled=("busy",))  # fmt: skip
                        _number("Samples per ray", "n_samples", v_if="method === 'raymarch'")
                        v3.VSlider(label="Bone contrast", v_model=("bone_contrast",), min=0.1, max=5.0, step=0.1,
                                   thumb_label=True, density="compact", hide_details=True, id="slider-bone_contrast",
                                   disabled=("busy",))  # fmt: skip
                        v3.VSelect(label="Display", v_model=("display_mode",), items=("display_modes",),
                                   density="compact", hide_details=True, classes="mb-2", id="display-mode",
                                   disabled=("busy",))  # fmt: skip
                        v3.VSelect(label="Device", v_model=("device",), items=("devices",), density="compact",
                                   hide_details=True, id="device", disabled=("busy",))  # fmt: skip
                with v3.VCard(title="Output", density="compact", classes="mb-2"):
                    with v3.VCardText():
                        v3.VCheckbox(label="Per-segment DRRs", v_model=("render_segments",), density="compact",
                                     hide_details=True, id="render-segments",
                                     disabled=("busy || !seg_name",))  # fmt: skip
                        v3.VSelect(label="Segments (none selected: the visible ones)", v_model=("segment_ids",),
                                   items=("segments",), multiple=True, chips=True, closable_chips=True,
                                   density="compact", hide_details=True, v_if="render_segments",
                                   id="segment-ids")  # fmt: skip
                        with html.Div(classes="d-flex ga-2 align-center mt-2"):
                            v3.VBtn("Render", click=ctrl.render, color="primary", id="render",
                                    disabled=("busy",))  # fmt: skip
                            v3.VBtn("Cancel", click=ctrl.cancel, v_show=("busy",), id="cancel")
                            v3.VSwitch(label="Live", v_model=("live",), density="compact", hide_details=True,
                                       color="primary", id="live", disabled=("busy",))  # fmt: skip
                        v3.VProgressLinear(model_value=("progress",), v_show=("busy",), height=6, id="progress",
                                           classes="mt-2")  # fmt: skip
                        html.Div("DRR #{{ drr.count }}: {{ drr.width }} × {{ drr.height }}", id="drr-info",
                                 classes="text-caption mt-1", v_if=("drr.width",))  # fmt: skip
                with v3.VCard(title="Registration", density="compact", classes="mb-2"):
                    with v3.VCardText():
                        html.Div("X-ray: {{ xray_name || 'none' }}", id="xray-name", classes="mb-1")
                        html.Label(f"Upload ({', '.join(XRAY_EXTENSIONS)}) ", classes="text-caption")
                        html.Input(
                            type="file", accept=",".join(XRAY_EXTENSIONS), id="upload-xray", disabled=("busy",),
                            change=_UPLOAD.format(role="xray", trigger=ctrl.trigger_name(ctrl.upload_xray)),
                        )  # fmt: skip
                        with html.Div(classes="d-flex ga-2 mt-2 flex-wrap"):
                            v3.VBtn("Use DRR as X-ray", click=ctrl.xray_from_drr, size="small", id="xray-from-drr",
                                    disabled=("busy || !drr.width",))  # fmt: skip
                            v3.VBtn("Register", click=ctrl.register, size="small", color="primary", id="register",
                                    disabled=("busy || !xray_name",))  # fmt: skip
                            v3.VBtn("Undo", click=ctrl.undo_registration, size="small", id="undo-registration",
                                    disabled=("busy || !can_undo",))  # fmt: skip
                        html.Div("Similarity: {{ similarity }}", id="similarity", classes="text-caption mt-1",
                                 v_if=("similarity",))  # fmt: skip
                        v3.VCheckbox(label="Overlay DRR on X-ray", v_model=("show_overlay",), density="compact",
                                     hide_details=True, id="show-overlay", disabled=("!xray_name",))  # fmt: skip
                        v3.VSelect(label="Overlay", v_model=("overlay_mode",), items=("overlay_modes",),
                                   density="compact", hide_details=True, classes="mb-2", id="overlay-mode",
                                   v_if=("show_overlay",))  # fmt: skip
                        v3.VSlider(label="DRR weight", v_model=("overlay_blend",), min=0.0, max=1.0, step=0.05,
                                   thumb_label=True, density="compact", hide_details=True, id="slider-overlay_blend",
                                   v_if=("show_overlay && overlay_mode === 'blend'",))  # fmt: skip
        with layout.content:
            viewer.placeIn(layout)
