"""A 3D model of the imaging geometry: source point, beam frustum and detector outline.

The polydata is in camera coordinates (source at the origin, detector on z = sdd) and the model node
is put under the C-arm transform node, whose ToWorld matrix is the camera-to-world pose, so the model
follows the C-arm without being rebuilt.

Points: 0 = source, 1–4 = detector corners (pixel edges, ring order), 5 = detector centre (principal
point). Cells: a vertex at the source, four lines source → corner, the closed detector rectangle, and
the central ray source → principal point.
"""

from __future__ import annotations

import vtk

from .carm import cArmToWorld
from .conversion import nodeLabel
from .errors import NanoDRRError
from .geometry import CArmGeometry

MODEL_COLOR = (1.0, 0.85, 0.2)


def geometryPolyData(geometry: CArmGeometry) -> vtk.vtkPolyData:
    """The source/frustum/detector polydata in camera coordinates (mm)."""
    corners = geometry.detectorCorners()
    points = vtk.vtkPoints()
    points.InsertNextPoint(0.0, 0.0, 0.0)
    for c in corners:
        points.InsertNextPoint(*c)
    points.InsertNextPoint(-geometry.x0, -geometry.y0, geometry.sdd)

    verts = vtk.vtkCellArray()
    verts.InsertNextCell(1)
    verts.InsertCellPoint(0)
    lines = vtk.vtkCellArray()
    for i in range(1, 5):
        lines.InsertNextCell(2)
        lines.InsertCellPoint(0)
        lines.InsertCellPoint(i)
    lines.InsertNextCell(5)
    for i in (1, 2, 3, 4, 1):
        lines.InsertCellPoint(i)
    lines.InsertNextCell(2)
    lines.InsertCellPoint(0)
    lines.InsertCellPoint(5)

    poly = vtk.vtkPolyData()
    poly.SetPoints(points)
    poly.SetVerts(verts)
    poly.SetLines(lines)
    return poly


def updateGeometryModel(carmNode, geometry: CArmGeometry, modelNode=None):
    """Create or update the geometry model under ``carmNode``; returns the model node."""
    cArmToWorld(carmNode)
    if not isinstance(geometry, CArmGeometry):
        raise NanoDRRError(f"geometry: expected a CArmGeometry, got {type(geometry).__name__}")
    geometry.validate()
    scene = carmNode.GetScene()
    if modelNode is not None:
        if not hasattr(modelNode, "IsA") or not modelNode.IsA("vtkMRMLModelNode"):
            raise NanoDRRError(f"modelNode: expected a model node, got {type(modelNode).__name__}")
        if modelNode.GetScene() is not scene:
            raise NanoDRRError(f"modelNode {nodeLabel(modelNode)}: is not in the C-arm's scene")

    poly = geometryPolyData(geometry)
    if modelNode is None:
        modelNode = scene.AddNewNodeByClass(
            "vtkMRMLModelNode", scene.GenerateUniqueName(f"{carmNode.GetName()} geometry")
        )
        modelNode.SetAttribute("NanoDRR.role", "geometryModel")
    modelNode.SetAndObservePolyData(poly)
    modelNode.SetAndObserveTransformNodeID(carmNode.GetID())
    if modelNode.GetDisplayNode() is None:
        modelNode.CreateDefaultDisplayNodes()
        display = modelNode.GetDisplayNode()
        if display is not None:
            display.SetColor(*MODEL_COLOR)
            display.SetLineWidth(2.0)
            display.SetPointSize(8.0)
    return modelNode
