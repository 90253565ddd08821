"""Generation pipelines: requests -> diffusers calls -> images.

``DiffusionGenerator`` (generator.py) is the entry point; ``plan.py`` turns a request into
a checked plan without a model; ``masks``, ``pixels``, ``previews``, ``schedulers`` and
``latents`` are the pieces it is built from.

Importing this package imports nothing heavy; import the modules you need.
"""
