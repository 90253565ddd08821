"""The Atelier daemon: transport -> jobs -> pipelines -> models."""
