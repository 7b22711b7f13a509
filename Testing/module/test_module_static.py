"""Static checks of the Slicer module and extension files (Slicer's Qt is not available here).

Parses, without importing, what Slicer would load: the .ui (Qt Designer XML), NanoDRR.py (with ``ast``:
the parameter-node dataclass, ``self.ui.<name>`` uses, module-level imports), the CMake file lists, the
extension catalog entry (NanoDRR.json), the legacy description (NanoDRR.s4ext) and the icon. Each check
mirrors a rule that Slicer, the parameterNodeWrapper, CMake or the ExtensionsIndex applies at run or
submission time, so that a mistake fails here rather than in a user's Slicer.
"""

from __future__ import annotations

import ast
import json
import py_compile
import re
import shlex
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "NanoDRRSlicer"
MODULE_PY = MODULE_DIR / "NanoDRR.py"
LOGIC_PY = MODULE_DIR / "NanoDRRLib" / "logic.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "NanoDRR.ui"
ICON = MODULE_DIR / "Resources" / "Icons" / "NanoDRR.png"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
TOP_CMAKE = REPO / "CMakeLists.txt"
ENGINE_ROOT = REPO / "NanoDRREngine"
ENGINE_PACKAGE = ENGINE_ROOT / "nanodrr_engine"
CATALOG_JSON = REPO / "NanoDRR.json"
S4EXT = REPO / "NanoDRR.s4ext"
REPO_RAW_URL = "https://raw.githubusercontent.com/nanodrr/SlicerNanoDRR/main/"

#: Python versions Slicer 5.10+ ships or may ship; the module's files must parse under all of them.
PYTHON_VERSIONS = [(3, 10), (3, 11), (3, 12)]

#: Names the parameterNodeWrapper reserves on the wrapped class (a field with one of them breaks it).
RESERVED_FIELD_NAMES = {
    "allParameters",
    "default",
    "isCached",
    "dataType",
    "getValue",
    "setValue",
    "connectGui",
    "connectParametersToGui",
    "disconnectGui",
    "StartModify",
    "EndModify",
    "AddObserver",
    "RemoveObserver",
    "Modified",
    "parameterNode",
}

#: Widget classes the parameterNodeWrapper's GUI connectors accept, per field type (its guiConnectors.py).
CONNECTOR_WIDGETS = {
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"},
    "int": {"QSpinBox", "QSlider", "QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider",
            "ctkDoubleSpinBox", "qMRMLSpinBox", "QComboBox", "ctkComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox",
              "qMRMLSpinBox", "QComboBox", "ctkComboBox"},
    "str": {"QLineEdit", "QLabel", "QTextEdit", "QComboBox", "ctkComboBox"},
    "node": {"qMRMLNodeComboBox"},
    "enum": {"QComboBox", "ctkComboBox"},
}  # fmt: skip
COMBO_WIDGETS = {"QComboBox", "ctkComboBox"}
SLIDER_WIDGETS = {"ctkSliderWidget", "qMRMLSliderWidget"}

#: Module-level imports allowed in NanoDRR.py: Slicer's own modules, the standard library, NanoDRRLib.
LIGHT_IMPORTS = {"slicer", "qt", "vtk", "ctk", "NanoDRRLib"}
#: What NanoDRRLib may not import at load time: not shipped with Slicer (numpy and SimpleITK are).
#: (the engine package itself may load: it is torch-free until a public name is used; nanodrr_engine.names
#: is what NanoDRRLib takes from it)
LIB_FORBIDDEN_AT_IMPORT = (
    "torch", "numba", "triton", "PyTorchUtils", "nanodrr_engine.drr", "nanodrr_engine.data",
    "nanodrr_engine.registration",
)  # fmt: skip

#: Catalog-entry keys of slicer-extension-catalog-entry-schema v1.0.2 (additionalProperties: false).
CATALOG_KEYS = {
    "$schema",
    "category",
    "scm_url",
    "scm_revision",
    "scm_type",
    "build_dependencies",
    "dicom_support_rule",
    "build_subdirectory",
    "enabled",
    "tier",
}

#: Categories the ExtensionsIndex accepts (scripts/check_description_files.py, ACCEPTED_EXTENSION_CATEGORIES).
ACCEPTED_CATEGORIES = {
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda",
    "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation",
    "Filtering", "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "Image Synthesis", "IGT",
    "Informatics", "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning",
    "Otolaryngology", "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy",
    "Registration", "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis",
    "Shape Regression", "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging",
    "Supervisely", "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking", "Tractography",
    "Training", "Ultrasound", "Utilities", "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools",
    "Web System Tools", "Wizards",
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------------------------------------


@cache
def ui_root() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def _property(element: ET.Element, name: str) -> ET.Element | None:
    for prop in element.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def _property_value(element: ET.Element, name: str):
    prop = _property(element, name)
    if prop is None or len(prop) == 0:
        return None
    value = prop[0]
    if value.tag in ("double", "number"):
        return float(value.text)
    if value.tag == "bool":
        return value.text == "true"
    if value.tag == "stringlist":
        return [s.text for s in value.findall("string")]
    return value.text


@cache
def ui_widgets() -> dict[str, ET.Element]:
    """objectName -> <widget> element, for every widget in the .ui (the top-level one included)."""
    widgets: dict[str, ET.Element] = {}
    for widget in ui_root().iter("widget"):
        name = widget.get("name")
        assert name not in widgets, f"duplicate widget objectName {name!r} in {UI_FILE.name}"
        widgets[name] = widget
    return widgets


@cache
def ui_bindings() -> dict[str, ET.Element]:
    """SlicerParameterName -> widget element."""
    bindings: dict[str, ET.Element] = {}
    for widget in ui_widgets().values():
        prop = _property(widget, "SlicerParameterName")
        if prop is None:
            continue
        assert prop.get("stdset") == "0", (
            f"{widget.get('name')}: SlicerParameterName must be a dynamic property"
        )
        name = prop.findtext("string")
        assert name not in bindings, f"parameter {name!r} bound to two widgets"
        bindings[name] = widget
    return bindings


@cache
def module_ast() -> ast.Module:
    return ast.parse(MODULE_PY.read_text(encoding="utf-8"), filename=str(MODULE_PY))


def _annotation_parts(annotation: ast.expr) -> tuple[str, list[ast.expr]]:
    """('bool' | 'int' | 'float' | 'str' | 'node' | 'list' | ..., Annotated metadata) of a field annotation."""
    meta: list[ast.expr] = []
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", None) == "Annotated":
        elements = annotation.slice.elts
        annotation, meta = elements[0], list(elements[1:])
    if isinstance(annotation, ast.BinOp):  # X | None
        names = {getattr(side, "id", None) for side in (annotation.left, annotation.right)}
        names.discard(None)
        names.discard("None")
        assert len(names) == 1, ast.unparse(annotation)
        name = names.pop()
    elif isinstance(annotation, ast.Subscript):
        name = annotation.value.id
    else:
        name = annotation.id
    kind = "node" if name.startswith("vtkMRML") else name
    return kind, meta


@cache
def module_enums() -> dict[str, ast.ClassDef]:
    """enum.Enum subclasses defined in NanoDRR.py (parameter types the wrapper stores by member name)."""
    return {
        node.name: node
        for node in module_ast().body
        if isinstance(node, ast.ClassDef) and any(ast.unparse(b) in ("enum.Enum", "Enum") for b in node.bases)
    }


@cache
def parameter_fields() -> dict[str, tuple[str, list[ast.expr], ast.expr | None]]:
    """Field name -> (kind, Annotated metadata, default expression) of the @parameterNodeWrapper class."""
    classes = [
        node
        for node in module_ast().body
        if isinstance(node, ast.ClassDef)
        and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list)
    ]
    assert [c.name for c in classes] == ["NanoDRRParameterNode"], "expected one @parameterNodeWrapper class"
    fields = {}
    for statement in classes[0].body:
        if isinstance(statement, ast.AnnAssign):
            kind, meta = _annotation_parts(statement.annotation)
            kind = "enum" if kind in module_enums() else kind
            fields[statement.target.id] = (kind, meta, statement.value)
    return fields


def module_constant(name: str):
    for node in module_ast().body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"NanoDRR.py defines no module constant {name}")


def _meta_call(meta: list[ast.expr], name: str) -> ast.Call | None:
    for item in meta:
        if isinstance(item, ast.Call) and getattr(item.func, "id", None) == name:
            return item
    return None


def _strip_cmake_comment(line: str) -> str:
    """The line without its # comment (a # inside a quoted argument is kept)."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def cmake_sets(path: Path) -> dict[str, list[str]]:
    """Variable -> values of every set(VAR v1 v2 ...) in a CMake file (a quoted value stays one value)."""
    text = "\n".join(_strip_cmake_comment(line) for line in path.read_text(encoding="utf-8").splitlines())
    result = {}
    for match in re.finditer(r"\bset\s*\(", text):
        quoted, end = False, match.end()
        while quoted or text[end] != ")":  # the closing parenthesis outside quotes
            quoted ^= text[end] == '"'
            end += 1
        name, *values = shlex.split(text[match.end() : end])
        result[name] = values
    return result


def _expand(values: list[str], variables: dict[str, str]) -> list[str]:
    return [re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], v) for v in values]


@cache
def module_cmake_lists() -> dict[str, list[str]]:
    sets = cmake_sets(MODULE_CMAKE)
    variables = {"MODULE_NAME": sets["MODULE_NAME"][0]}
    return {key: _expand(sets[key], variables) for key in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES",
                                                           "ENGINE_PYTHON_SCRIPTS")}  # fmt: skip


@cache
def extension_metadata() -> dict[str, str]:
    sets = cmake_sets(TOP_CMAKE)
    return {key: " ".join(value) for key, value in sets.items() if key.startswith("EXTENSION_")}


@cache
def s4ext_fields() -> dict[str, str]:
    fields = {}
    for line in S4EXT.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.strip().partition(" ")
        fields[key] = value.strip()
    return fields


def shipped_python_files() -> list[Path]:
    lists = module_cmake_lists()
    return [MODULE_DIR / f for f in lists["MODULE_PYTHON_SCRIPTS"]] + [
        ENGINE_ROOT / f for f in lists["ENGINE_PYTHON_SCRIPTS"]
    ]


# ---------------------------------------------------------------------------------------------------------
# .ui and parameter node
# ---------------------------------------------------------------------------------------------------------


def test_ui_is_a_qmrmlwidget_named_after_the_module():
    root = ui_root()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == "NanoDRR"
    top = root.find("widget")
    assert (top.get("class"), top.get("name")) == ("qMRMLWidget", "NanoDRR")
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in ui_widgets().values()}
    custom = {c for c in used if c.startswith(("ctk", "qMRML", "qSlicer"))}
    assert custom <= declared, f"custom widgets used but not declared: {sorted(custom - declared)}"


def test_ui_has_the_required_sections_and_controls():
    widgets = ui_widgets()
    sections = {
        _property_value(w, "text") for w in widgets.values() if w.get("class") == "ctkCollapsibleButton"
    }
    assert {"Inputs", "C-arm", "Detector", "Rendering", "Output"} <= sections
    expected = {
        "inputVolumeSelector": "qMRMLNodeComboBox",
        "segmentationSelector": "qMRMLNodeComboBox",
        "segmentsTableView": "qMRMLSegmentsTableView",
        "carmTransformSelector": "qMRMLNodeComboBox",
        "createCArmButton": "QPushButton",
        "primaryAngleSliderWidget": "ctkSliderWidget",
        "secondaryAngleSliderWidget": "ctkSliderWidget",
        "sodSpinBox": "QDoubleSpinBox",
        "sddSpinBox": "QDoubleSpinBox",
        "showGeometryCheckBox": "QCheckBox",
        "detectorPresetComboBox": "QComboBox",
        "rowsSpinBox": "QSpinBox",
        "columnsSpinBox": "QSpinBox",
        "deviceComboBox": "QComboBox",
        "samplingComboBox": "QComboBox",
        "displayModeComboBox": "QComboBox",
        "outputVolumeSelector": "qMRMLNodeComboBox",
        "renderSegmentsCheckBox": "QCheckBox",
        "liveCheckBox": "QCheckBox",
        "renderButton": "QPushButton",
        "progressBar": "QProgressBar",
        "cancelButton": "QPushButton",
    }
    actual = {name: widgets[name].get("class") for name in expected if name in widgets}
    assert actual == expected


def test_every_bound_parameter_is_a_field_of_the_parameter_node():
    unknown = set(ui_bindings()) - set(parameter_fields())
    assert not unknown, f"SlicerParameterName values with no NanoDRRParameterNode field: {sorted(unknown)}"


def test_every_field_is_bound_or_listed_as_deliberately_unbound():
    fields, bound = set(parameter_fields()), set(ui_bindings())
    unbound = set(module_constant("UNBOUND_PARAMETERS"))
    assert unbound <= fields, f"UNBOUND_PARAMETERS names that are not fields: {sorted(unbound - fields)}"
    assert not (unbound & bound), f"listed as unbound but bound in the .ui: {sorted(unbound & bound)}"
    assert fields == bound | unbound, (
        f"fields neither bound nor listed in UNBOUND_PARAMETERS: {sorted(fields - bound - unbound)}"
    )


def test_parameter_node_has_the_specified_fields():
    fields = parameter_fields()
    expected_kinds = {
        "inputVolume": "node", "segmentation": "node", "carmTransform": "node", "outputVolume": "node",
        "primaryAngle": "float", "secondaryAngle": "float", "sod": "float", "sdd": "float",
        "rows": "int", "columns": "int", "delx": "float", "dely": "float", "x0": "float", "y0": "float",
        "detectorPreset": "str", "device": "str", "sampling": "enum", "quality": "int", "boneContrast": "float",
        "displayMode": "str", "renderSegments": "bool", "live": "bool", "showGeometry": "bool",
    }  # fmt: skip
    assert {name: fields[name][0] for name in expected_kinds if name in fields} == expected_kinds
    assert not (set(fields) & RESERVED_FIELD_NAMES)

    def within(name):
        call = _meta_call(fields[name][1], "WithinRange")
        assert call is not None, f"{name} needs WithinRange"
        return tuple(ast.literal_eval(arg) for arg in call.args)

    assert within("primaryAngle") == (-180.0, 180.0)
    assert within("secondaryAngle") == (-90.0, 90.0)
    choices = {
        name: ast.literal_eval(_meta_call(fields[name][1], "Choice").args[0])
        for name in ("device", "displayMode")
    }
    assert choices == {
        "device": ["auto", "cpu", "cuda", "mps"],
        "displayMode": ["attenuation", "transmission"],
    }


def test_bound_widgets_can_represent_their_fields():
    """The check parameterNodeWrapper.connectGui does at run time: a connector exists for (widget, type)."""
    fields = parameter_fields()
    for name, widget in ui_bindings().items():
        kind, meta, default = fields[name]
        cls = widget.get("class")
        assert cls in CONNECTOR_WIDGETS.get(kind, set()), f"{name}: no GUI connector for {cls} and {kind}"
        if cls in COMBO_WIDGETS and kind != "enum":  # an Enum fills the combo from its members
            assert _meta_call(meta, "Choice") is not None, f"{name}: combo boxes need a Choice annotation"
        if cls in SLIDER_WIDGETS:
            assert _meta_call(meta, "WithinRange") is not None, (
                f"{name}: sliders need a WithinRange annotation"
            )
        within = _meta_call(meta, "WithinRange")
        if within is not None and cls not in COMBO_WIDGETS:
            low, high = (float(ast.literal_eval(arg)) for arg in within.args)
            # The connector overwrites the widget range; keep the .ui honest so Designer shows the same.
            assert (_property_value(widget, "minimum"), _property_value(widget, "maximum")) == (low, high), (
                name
            )
            if default is not None:
                assert low <= ast.literal_eval(default) <= high, f"{name}: default outside its range"


def test_enum_fields_default_to_a_member_and_label_their_combo_items():
    """The wrapper's QComboBox-to-Enum connector fills the combo with ``EnumClass.label(member)`` (a plain
    method: a property would not be callable on the class) and stores the member name; the default must be
    a member of the field's own enum."""
    enums = module_enums()
    fields = parameter_fields()
    classes = {n.name: n for n in module_ast().body if isinstance(n, ast.ClassDef)}
    wrapper = classes["NanoDRRParameterNode"]
    annotations = {
        s.target.id: ast.unparse(s.annotation) for s in wrapper.body if isinstance(s, ast.AnnAssign)
    }
    enumFields = {name for name, (kind, _meta, _default) in fields.items() if kind == "enum"}
    assert "sampling" in enumFields
    for name in enumFields:
        cls = enums[annotations[name]]
        members = [t.id for s in cls.body if isinstance(s, ast.Assign) for t in s.targets]
        default = fields[name][2]
        assert default is not None and ast.unparse(default) in {f"{cls.name}.{m}" for m in members}, name
        labels = [f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "label"]
        assert labels and not labels[0].decorator_list, f"{cls.name}.label must be a plain method"
        assert [a.arg for a in labels[0].args.args] == ["self"]


def test_sampling_choices_are_the_logic_methods_and_the_gui_defaults_to_joseph():
    enum_values = {
        t.id: ast.literal_eval(s.value)
        for s in module_enums()["SamplingMethod"].body
        if isinstance(s, ast.Assign)
        for t in s.targets
    }
    logic = ast.parse(LOGIC_PY.read_text(encoding="utf-8"))
    # the logic takes the engine's names (torch-free module), not a copy of them
    assert any(
        isinstance(n, ast.ImportFrom)
        and n.module == "nanodrr_engine.names"
        and "METHODS" in {a.name for a in n.names}
        for n in logic.body
    )
    from nanodrr_engine.names import METHODS as methods

    assert sorted(enum_values.values()) == sorted(methods) == ["joseph", "raymarch"]
    assert ast.unparse(parameter_fields()["sampling"][2]) == "SamplingMethod.JOSEPH"
    # the parameter binding hands the sampling field to the workflow's settings (live re-renders with it:
    # Testing/module/test_module_headless.py)
    binding = ast.parse((LOGIC_PY.parent / "parameters.py").read_text(encoding="utf-8"))
    settings = next(
        ast.literal_eval(n.value)
        for n in binding.body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "SETTINGS_FIELDS" for t in n.targets)
    )
    assert settings["sampling"] == "method"


def test_node_selectors_list_the_field_node_class():
    fields_src = {
        s.target.id: ast.unparse(s.annotation)
        for c in module_ast().body
        if isinstance(c, ast.ClassDef) and c.name == "NanoDRRParameterNode"
        for s in c.body
        if isinstance(s, ast.AnnAssign)
    }
    for name, widget in ui_bindings().items():
        if widget.get("class") == "qMRMLNodeComboBox":
            node_types = _property_value(widget, "nodeTypes")
            assert node_types and all(t in fields_src[name] for t in node_types), (name, node_types)


def test_self_ui_attributes_exist_in_the_ui():
    used = {
        node.attr
        for node in ast.walk(module_ast())
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and getattr(node.value.value, "id", None) == "self"
    }
    assert used, "NanoDRR.py uses no self.ui widgets?"
    missing = used - set(ui_widgets())
    assert not missing, f"self.ui.<name> with no widget of that objectName in the .ui: {sorted(missing)}"


def test_mrml_widgets_receive_the_scene_and_connections_are_valid():
    widgets = ui_widgets()
    connections = [
        (c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot"))
        for c in ui_root().iter("connection")
    ]
    for sender, _signal, receiver, _slot in connections:
        assert sender in widgets and receiver in widgets, (sender, receiver)
    scene_receivers = {
        receiver
        for sender, signal, receiver, slot in connections
        if (sender, signal, slot)
        == ("NanoDRR", "mrmlSceneChanged(vtkMRMLScene*)", "setMRMLScene(vtkMRMLScene*)")
    }
    mrml_widgets = {
        name for name, w in widgets.items() if w.get("class").startswith("qMRML") and name != "NanoDRR"
    }
    assert mrml_widgets <= scene_receivers, (
        f"MRML widgets without a scene: {sorted(mrml_widgets - scene_receivers)}"
    )


# ---------------------------------------------------------------------------------------------------------
# NanoDRR.py as Python source
# ---------------------------------------------------------------------------------------------------------


def test_the_widget_shows_the_workflows_status_and_holds_no_workflow_logic():
    """The widget follows the logic's workflow (live failures arrive as its status, an observer cannot
    raise) and reaches the workflow only through the logic: no pose, live or render code of its own."""
    classes = {node.name: node for node in module_ast().body if isinstance(node, ast.ClassDef)}
    widget = {f.name: f for f in classes["NanoDRRWidget"].body if isinstance(f, ast.FunctionDef)}
    assert "workflow.addListener(self.onWorkflowChanged)" in ast.unparse(widget["_listen"])
    assert "self.ui.statusLabel.text = workflow.status" in ast.unparse(widget["onWorkflowChanged"])
    source = ast.unparse(classes["NanoDRRWidget"])
    for name in ("setCArmAngles", "getCArmAngles", "LiveRenderController", "render(", "renderSegments"):
        assert name not in source.replace("renderFromParameters", ""), name
    logic = {f.name for f in classes["NanoDRRLogic"].body if isinstance(f, ast.FunctionDef)}
    assert {"workflow", "bind", "resetWorkflow"} <= logic


def test_module_defines_the_template_classes():
    classes = {node.name: node for node in module_ast().body if isinstance(node, ast.ClassDef)}
    bases = {name: [ast.unparse(b) for b in node.bases] for name, node in classes.items()}
    assert bases["NanoDRR"] == ["ScriptedLoadableModule"]
    assert bases["NanoDRRWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases["NanoDRRLogic"] == ["ScriptedLoadableModuleLogic"]  # composes NanoDRRLib's logic
    assert bases["NanoDRRTest"] == ["ScriptedLoadableModuleTest"]
    assert "runTest" in {f.name for f in classes["NanoDRRTest"].body if isinstance(f, ast.FunctionDef)}


@pytest.mark.parametrize("version", PYTHON_VERSIONS, ids=lambda v: f"py{v[0]}{v[1]}")
def test_shipped_python_parses_for_supported_versions(version):
    for path in [MODULE_PY, *shipped_python_files()]:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=version)


def test_shipped_python_compiles(tmp_path):
    for index, path in enumerate([MODULE_PY, *shipped_python_files()]):
        py_compile.compile(str(path), cfile=str(tmp_path / f"{index}.pyc"), doraise=True)


def test_module_imports_nothing_heavy_at_load_time():
    """torch & co. are imported inside functions, so the module loads (and offers to install them) without."""
    stdlib = set(sys.stdlib_module_names)
    top_level = []
    for node in module_ast().body:
        if isinstance(node, ast.Import):
            top_level += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            top_level.append(node.module)
    roots = {name.split(".")[0] for name in top_level}
    assert roots <= stdlib | LIGHT_IMPORTS, (
        f"heavy module-level imports: {sorted(roots - stdlib - LIGHT_IMPORTS)}"
    )
    lazily = {
        (alias.name if isinstance(node, ast.Import) else node.module).split(".")[0]
        for node in ast.walk(module_ast())
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert {"nanodrr_engine", "PyTorchUtils"} <= lazily  # and they are used (inside functions)


def test_nanodrrlib_imports_without_torch():
    """NanoDRR.py imports NanoDRRLib at load time, so NanoDRRLib must not import torch or the engine's
    torch modules eagerly."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import NanoDRRLib; "
        f"print(','.join(m for m in {LIB_FORBIDDEN_AT_IMPORT!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(MODULE_DIR)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"import NanoDRRLib pulled in: {result.stdout.strip()}"


# ---------------------------------------------------------------------------------------------------------
# CMake
# ---------------------------------------------------------------------------------------------------------


def _python_files(root: Path, relative_to: Path, exclude: tuple[str, ...] = ()) -> set[str]:
    return {
        p.relative_to(relative_to).as_posix()
        for p in root.rglob("*.py")
        if "__pycache__" not in p.parts and not any(part in exclude for part in p.relative_to(root).parts)
    }


def test_cmake_lists_name_existing_files_only_once():
    lists = module_cmake_lists()
    for key, base in (("MODULE_PYTHON_SCRIPTS", MODULE_DIR), ("MODULE_PYTHON_RESOURCES", MODULE_DIR),
                      ("ENGINE_PYTHON_SCRIPTS", ENGINE_ROOT)):  # fmt: skip
        values = lists[key]
        assert len(values) == len(set(values)), f"{key} lists a file twice"
        missing = [v for v in values if not (base / v).is_file()]
        assert not missing, f"{key} in {MODULE_CMAKE.relative_to(REPO)} names missing files: {missing}"


def test_every_module_python_file_is_listed_in_cmake():
    listed = set(module_cmake_lists()["MODULE_PYTHON_SCRIPTS"])
    on_disk = _python_files(MODULE_DIR, MODULE_DIR, exclude=("Testing",))
    missing = sorted(on_disk - listed)
    assert not missing, "add to MODULE_PYTHON_SCRIPTS in NanoDRRSlicer/CMakeLists.txt:\n  " + "\n  ".join(
        missing
    )


def test_every_engine_file_is_listed_in_cmake():
    listed = set(module_cmake_lists()["ENGINE_PYTHON_SCRIPTS"])
    on_disk = _python_files(ENGINE_PACKAGE, ENGINE_ROOT)
    missing = sorted(on_disk - listed)
    assert not missing, "add to ENGINE_PYTHON_SCRIPTS in NanoDRRSlicer/CMakeLists.txt:\n  " + "\n  ".join(
        missing
    )
    data_files = sorted(
        p.relative_to(ENGINE_ROOT).as_posix()
        for p in ENGINE_PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    )
    assert not data_files, f"engine data files would not ship with the extension: {data_files}"


def test_module_cmake_builds_the_module_and_ships_the_engine():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}", text)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    call = re.search(r"ctkMacroCompilePythonScript\((.*?)\n  \)", text, re.S).group(1)
    assert "SOURCE_DIR ${ENGINE_SOURCE_DIR}" in call
    assert "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}" in call
    assert "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" in call
    assert "NO_INSTALL_SUBDIR" in call
    sets = cmake_sets(MODULE_CMAKE)
    engine_dir = sets["ENGINE_SOURCE_DIR"][0].replace("${CMAKE_CURRENT_SOURCE_DIR}", str(MODULE_DIR))
    assert Path(engine_dir).resolve() == ENGINE_ROOT.resolve()


# Minimal stand-ins for Slicer's CMake API: same signatures and the same file checks, and "building" copies
# the listed files where Slicer would put them (the qt-scripted-modules folder on Slicer's sys.path).
STUB_SLICER_CONFIG = r"""
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
"""
STUB_USE_SLICER = r"""
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
set(BUILD_TESTING ON)
foreach(var EXTENSION_HOMEPAGE EXTENSION_CATEGORY EXTENSION_CONTRIBUTORS EXTENSION_DESCRIPTION
            EXTENSION_ICONURL EXTENSION_SCREENSHOTURLS EXTENSION_DEPENDS)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "${var} must be set before find_package(Slicer)")
  endif()
endforeach()
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(varname TARGET_NAME SCRIPTS DESTINATION_DIR INSTALL_DIR)
    if(NOT DEFINED MY_${varname})
      message(FATAL_ERROR "${varname} is mandatory")
    endif()
  endforeach()
  if(MY_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "ctkMacroCompilePythonScript: unknown arguments ${MY_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  foreach(file ${MY_SCRIPTS} ${MY_RESOURCES})
    if(NOT EXISTS ${MY_SOURCE_DIR}/${file})
      message(FATAL_ERROR "ctkMacroCompilePythonScript(${MY_TARGET_NAME}): missing ${MY_SOURCE_DIR}/${file}")
    endif()
    configure_file(${MY_SOURCE_DIR}/${file} ${MY_DESTINATION_DIR}/${file} COPYONLY)
  endforeach()
endmacro()
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  foreach(value ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value})
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file '${value}'")
    endif()
  endforeach()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    NO_INSTALL_SUBDIR
    )
endmacro()
macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT;TESTNAME_PREFIX" "SLICER_ARGS" ${ARGN})
  if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT})
    message(FATAL_ERROR "slicer_add_python_unittest: missing ${MY_SCRIPT}")
  endif()
  file(APPEND ${CMAKE_BINARY_DIR}/python_unittests.txt "${MY_SCRIPT}\n")
endmacro()
"""


@pytest.fixture(scope="module")
def stub_build(tmp_path_factory) -> Path:
    """Configure the extension against the stub Slicer; returns the qt-scripted-modules folder it fills."""
    cmake = __import__("shutil").which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    root = tmp_path_factory.mktemp("stub_slicer")
    slicer_dir, build = root / "Slicer", root / "build"
    slicer_dir.mkdir()
    (slicer_dir / "SlicerConfig.cmake").write_text(STUB_SLICER_CONFIG)
    (slicer_dir / "UseSlicer.cmake").write_text(STUB_USE_SLICER)
    (slicer_dir / "Empty.cmake").write_text("")
    result = subprocess.run(
        [cmake, "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={slicer_dir}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (build / "python_unittests.txt").read_text().split() == ["NanoDRR.py"]
    return build / "lib" / "Slicer-5.10" / "qt-scripted-modules"


def test_cmake_configures_and_lays_out_the_module(stub_build):
    lists = module_cmake_lists()
    expected = {
        *lists["MODULE_PYTHON_SCRIPTS"],
        *lists["MODULE_PYTHON_RESOURCES"],
        *lists["ENGINE_PYTHON_SCRIPTS"],
    }
    present = {p.relative_to(stub_build).as_posix() for p in stub_build.rglob("*") if p.is_file()}
    assert expected == present
    assert (stub_build / "NanoDRR.py").read_bytes() == MODULE_PY.read_bytes()


def test_shipped_engine_imports_from_the_module_folder(stub_build):
    """The engine copy next to the module is complete: every submodule imports from there, not the venv."""
    code = r"""
import importlib, json, pkgutil, sys
sys.path.insert(0, sys.argv[1])
import nanodrr_engine
names = [m.name for m in pkgutil.walk_packages(nanodrr_engine.__path__, "nanodrr_engine.")]
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as e:
        failed[name] = repr(e)
print(json.dumps({"file": nanodrr_engine.__file__, "names": names, "failed": failed}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code, str(stub_build)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).resolve().is_relative_to(stub_build.resolve())
    # Optional accelerators may be missing on a user's machine; anything else missing is a packaging bug.
    optional = ("numba", "triton")
    real = {k: v for k, v in report["failed"].items() if not any(o in v for o in optional)}
    assert not real, real
    assert len(report["names"]) >= len(module_cmake_lists()["ENGINE_PYTHON_SCRIPTS"]) - 1


# ---------------------------------------------------------------------------------------------------------
# Extension metadata
# ---------------------------------------------------------------------------------------------------------


def test_top_level_cmake_has_the_extension_metadata():
    text = TOP_CMAKE.read_text(encoding="utf-8")
    assert re.search(r"^project\(NanoDRR\)", text, re.M), "project() must be the extension name (NanoDRR)"
    assert "find_package(Slicer REQUIRED)" in text and "include(${Slicer_USE_FILE})" in text
    assert "add_subdirectory(NanoDRRSlicer)" in text
    assert (
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text
        and "include(${Slicer_EXTENSION_CPACK})" in text
    )
    meta = extension_metadata()
    for key in (
        "HOMEPAGE",
        "CATEGORY",
        "CONTRIBUTORS",
        "DESCRIPTION",
        "ICONURL",
        "SCREENSHOTURLS",
        "DEPENDS",
    ):
        assert meta.get(f"EXTENSION_{key}"), f"EXTENSION_{key} is not set"
    assert meta["EXTENSION_HOMEPAGE"] == "https://github.com/nanodrr/SlicerNanoDRR"
    assert meta["EXTENSION_DEPENDS"] == "PyTorch"
    assert meta["EXTENSION_CATEGORY"] in ACCEPTED_CATEGORIES
    # The ExtensionsIndex checker reads these two with single-line regular expressions.
    assert re.search(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', text)
    assert re.search(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', text)


def test_icon_url_points_at_the_icon_in_this_repository():
    icon_url = extension_metadata()["EXTENSION_ICONURL"]
    assert icon_url.startswith(REPO_RAW_URL)
    assert (REPO / icon_url[len(REPO_RAW_URL) :]).resolve() == ICON.resolve()
    screenshots = extension_metadata()["EXTENSION_SCREENSHOTURLS"].split()
    assert screenshots
    for url in screenshots:  # the ExtensionsIndex downloads them and wants images
        assert url.startswith(REPO_RAW_URL), url
        path = REPO / url[len(REPO_RAW_URL) :]
        assert path.is_file(), f"{url} names no file in this repository"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"


def test_catalog_entry_follows_the_schema_and_agrees_with_cmake():
    raw = CATALOG_JSON.read_bytes()
    assert b"\r" not in raw, "the ExtensionsIndex requires LF line endings"
    entry = json.loads(raw)
    assert set(entry) <= CATALOG_KEYS, f"keys not in the schema: {sorted(set(entry) - CATALOG_KEYS)}"
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert re.fullmatch(
        r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
        r"slicer-extension-catalog-entry-schema-v1\.0\.\d+\.json#?",
        entry["$schema"],
    )
    meta = extension_metadata()
    assert entry["category"] == meta["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == meta["EXTENSION_DEPENDS"].split()
    assert entry["scm_url"].removesuffix(".git") == meta["EXTENSION_HOMEPAGE"]
    assert entry.get("scm_type", "git") == "git" and isinstance(entry["scm_revision"], str)
    assert isinstance(entry.get("tier", 1), int) and 1 <= entry.get("tier", 1) <= 5
    assert entry.get("build_subdirectory", ".") == "."
    # Extension name = file name = CMake project; the repository (not the extension) starts with "Slicer".
    assert CATALOG_JSON.stem == "NanoDRR" and not CATALOG_JSON.stem.lower().startswith("slicer")
    assert entry["scm_url"].rstrip("/").split("/")[-1].removesuffix(".git").startswith("Slicer")


def test_s4ext_carries_the_fields_and_agrees_with_cmake_and_catalog():
    fields = s4ext_fields()
    required = ("scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors",
                "category", "iconurl", "status", "description", "screenshoturls", "enabled")  # fmt: skip
    assert not [k for k in required if not fields.get(k)], (
        f"empty or missing: {[k for k in required if not fields.get(k)]}"
    )
    meta, entry = extension_metadata(), json.loads(CATALOG_JSON.read_text(encoding="utf-8"))
    assert fields["scm"] == "git"
    assert fields["scmurl"] == entry["scm_url"]
    assert fields["scmrevision"] == entry["scm_revision"] == "main"
    assert fields["depends"].split() == entry["build_dependencies"] == meta["EXTENSION_DEPENDS"].split()
    assert fields["build_subdirectory"] == entry.get("build_subdirectory", ".")
    assert fields["homepage"] == meta["EXTENSION_HOMEPAGE"]
    assert fields["contributors"] == meta["EXTENSION_CONTRIBUTORS"]
    assert fields["category"] == meta["EXTENSION_CATEGORY"] == entry["category"]
    assert fields["iconurl"] == meta["EXTENSION_ICONURL"]
    assert fields["description"] == meta["EXTENSION_DESCRIPTION"]
    assert fields["screenshoturls"] == meta["EXTENSION_SCREENSHOTURLS"]
    assert fields["enabled"] == "1"


def test_license_is_mit_for_the_contributors():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 NanoDRR contributors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def test_icon_is_a_valid_128x128_png():
    data = ICON.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, bit_depth, color_type = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (width, height) == (128, 128)
    assert bit_depth == 8 and color_type in (2, 6)  # RGB or RGBA
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    channels = 4 if color_type == 6 else 3
    assert len(pixels) == height * (1 + width * channels)
