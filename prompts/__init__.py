"""Jinja2 prompt templates, one per knowledge kind (found with importlib.resources)."""
