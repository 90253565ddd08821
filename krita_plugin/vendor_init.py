"""Third-party packages vendored into the plugin at build time (see krita_plugin/build.py)."""
