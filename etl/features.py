"""The dataset's columns: nine cytology features scored 1-10, a patient Id and the Class target."""

from __future__ import annotations

ID_COLUMN = "Id"
TARGET_COLUMN = "Class"

# (API field name, CSV column name, human description), in the model's column order.
FEATURES: tuple[tuple[str, str, str], ...] = (
    ("clump_thickness", "Cl.thickness", "Clump thickness"),
    ("cell_size_uniformity", "Cell.size", "Uniformity of cell size"),
    ("cell_shape_uniformity", "Cell.shape", "Uniformity of cell shape"),
    ("marginal_adhesion", "Marg.adhesion", "Marginal adhesion"),
    ("epithelial_cell_size", "Epith.c.size", "Single epithelial cell size"),
    ("bare_nuclei", "Bare.nuclei", "Bare nuclei"),
    ("bland_chromatin", "Bl.cromatin", "Bland chromatin"),
    ("normal_nucleoli", "Normal.nucleoli", "Normal nucleoli"),
    ("mitoses", "Mitoses", "Mitoses"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f[0] for f in FEATURES)
FEATURE_COLUMNS: tuple[str, ...] = tuple(f[1] for f in FEATURES)
EXPECTED_COLUMNS: tuple[str, ...] = (ID_COLUMN, *FEATURE_COLUMNS, TARGET_COLUMN)
FEATURE_MIN, FEATURE_MAX = 1, 10
LABELS = ("benign", "malignant")
