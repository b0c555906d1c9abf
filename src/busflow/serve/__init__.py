"""Serving trained models: predictors rebuilt from model folders or packages, ``busflow predict``, the web demo."""
