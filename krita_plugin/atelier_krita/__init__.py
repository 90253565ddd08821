"""Atelier for Krita: generate, fill, refine, depth and seamless textures as new layers.

Krita imports this package at start-up (see ``atelier_krita.desktop``) and the
docker registers itself, with its actions (Generate, Cancel, Apply; Tools > Scripts,
shortcuts in ``actions.py``). Outside Krita (unit tests) the logic modules import
without it.
"""

try:
    from krita import DockWidgetFactory, DockWidgetFactoryBase, Krita
except ImportError:  # not inside Krita
    Krita = None

if Krita is not None:
    from .docker import AtelierDocker, AtelierExtension

    Krita.instance().addDockWidgetFactory(
        DockWidgetFactory("atelier_krita_docker", DockWidgetFactoryBase.DockRight, AtelierDocker))
    Krita.instance().addExtension(AtelierExtension(Krita.instance()))
