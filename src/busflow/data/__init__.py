"""Data sources, ingestion and preprocessing for busflow."""
