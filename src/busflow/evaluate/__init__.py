"""Evaluation: per model and fold, classification and segmentation metrics on the test part."""
