"""Helpers shared by the model-layer tests."""
