"""busflow: reproducible breast-ultrasound deep-learning workflow."""

__version__ = "0.1.0"

CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")
