"""Backbones: the registry, one module per architecture, and their block maps.

This package knows models and nothing of files or data sets.
"""
