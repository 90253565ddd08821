"""Everything that touches Krita's API, behind a few small methods.

The controller reads and writes documents only through ``KritaDocument``;
pixel buffers cross this boundary as ``bytes`` in Krita's own BGRA order.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from krita import Krita
from PyQt5.QtCore import QByteArray, QUuid

from .geometry import Bounds, Extent
from .guides import ANNOTATION_DESCRIPTION, ANNOTATION_TYPE
from .jobs import JobRefused
from .live import PixelWatch, checksum
from .work import Bands

SETTINGS_GROUP = "atelier_krita"
SCALE_FILTER = "Bicubic"       # Krita's filter for the user's layers when Upscale scales the image


class DocumentClosed(Exception):
    """The document was closed: its layers cannot be read or written any more."""


class KritaDocument:
    """One open Krita document, as the plugin sees it."""

    def __init__(self, document: Any):
        self._doc = document
        self.name = document.name() or "untitled"   # kept: a closed document has none
        self._watch = PixelWatch()                    # what Live's polls read (pixels_checksum)

    @property
    def native(self) -> Any:
        return self._doc

    def same_as(self, other: "KritaDocument") -> bool:
        return self._doc == other._doc

    def is_open(self) -> bool:
        """False once the painter closed it (Krita's Document then has no root node)."""
        return self._doc.rootNode() is not None

    @property
    def extent(self) -> Extent:
        return Extent(self._doc.width(), self._doc.height())

    def format_problem(self) -> Optional[str]:
        """Why the plugin cannot work on this document, None when it can."""
        model, depth = self._doc.colorModel(), self._doc.colorDepth()
        if model == "RGBA" and depth == "U8":
            return None
        return (f"this document is {model} {depth}; Atelier works on RGBA 8-bit documents. "
                "Convert it with Image > Convert Image Color Space... (RGB/Alpha, "
                "8-bit integer/channel), or work on a copy")

    def selection_bounds(self) -> Optional[Bounds]:
        selection = self._doc.selection()
        if selection is None or selection.width() <= 0 or selection.height() <= 0:
            return None
        return Bounds(selection.x(), selection.y(), selection.width(), selection.height())

    def selection_mask(self, region: Bounds) -> bytes:
        """One byte a pixel of the selection inside ``region`` (0 where nothing is selected)."""
        selection = self._doc.selection()
        if selection is None:
            return bytes(region.width * region.height)
        return bytes(selection.pixelData(region.x, region.y, region.width, region.height))

    def read_canvas(self, region: Bounds, hidden: tuple[Any, ...] = ()) -> bytes:
        """BGRA of what the painter sees (all visible layers merged) inside ``region``,
        without the layers in ``hidden`` (the plugin's previews; hiding is not a step in
        the undo history)."""
        shown = [node for node in hidden if self._alive(node) and node.visible()]
        for node in shown:
            node.setVisible(False)
        if shown:
            self._doc.refreshProjection()
        try:
            self._doc.waitForDone()
            return bytes(self._doc.pixelData(region.x, region.y, region.width, region.height))
        finally:
            for node in shown:
                node.setVisible(True)
            if shown:
                self._doc.refreshProjection()

    def pixels_checksum(self, exclude: Any = None) -> int:
        """A cheap checksum of what the painter changes: the visible layers' own pixels
        (without ``exclude``, the live layer), visibility, opacity and order, and the
        selection's bounds. Which layers' pixels are read afresh at this call is
        ``PixelWatch``'s choice (the active layer always; all of them now and then);
        the others count with their last checksum. Quick copies on Qt's thread; adler32
        runs at C speed."""
        skip = str(exclude.uniqueId()) if exclude is not None and self._alive(exclude) else None
        width, height = self._doc.width(), self._doc.height()
        chunks: list[bytes] = [repr((width, height, self.selection_bounds())).encode()]
        painted: dict[str, Any] = {}

        def walk(node: Any) -> None:
            for child in node.childNodes():
                uid = str(child.uniqueId())
                if uid == skip or not child.visible():
                    continue
                chunks.append(f"{uid}:{child.opacity()}:{child.blendingMode()}".encode())
                if child.type() in ("paintlayer", "filllayer", "vectorlayer", "filelayer"):
                    painted[uid] = child
                walk(child)

        walk(self._doc.rootNode())
        active = self._doc.activeNode()
        now = time.monotonic()
        layers, full = self._watch.plan(now, str(active.uniqueId()) if active else None,
                                        list(painted))
        for uid in layers:
            self._watch.read(uid, checksum([bytes(painted[uid].pixelData(0, 0, width, height))]))
        if full:
            self._watch.swept(now, time.monotonic() - now)
        chunks += [f"{uid}={self._watch.sums[uid]}".encode() for uid in painted]
        return checksum(chunks)

    def top_node(self) -> Any:
        """The topmost layer (new layers above it are above everything)."""
        children = self._doc.rootNode().childNodes()
        return children[-1] if children else None

    def paint_layer_names(self) -> list[str]:
        names: list[str] = []

        def walk(node: Any) -> None:
            for child in node.childNodes():
                if child.type() == "paintlayer":
                    names.append(child.name())
                walk(child)

        walk(self._doc.rootNode())
        return names

    def read_layer(self, name: str, region: Bounds) -> bytes:
        """BGRA of one layer's own pixels inside ``region`` (transparent where it is empty)."""
        node = self._doc.nodeByName(name)
        if node is None:
            raise JobRefused(f"there is no layer named '{name}' to use as depth")
        return bytes(node.pixelData(region.x, region.y, region.width, region.height))

    # ---------------------------------------------------------- layers named by uniqueId
    def layer_choices(self, groups: bool = False) -> list[tuple[str, str]]:
        """(name, uniqueId) of the paint layers (and group layers with ``groups``), top of
        the layer stack first, as Krita's Layers docker lists them."""
        kinds = ("paintlayer", "grouplayer") if groups else ("paintlayer",)
        found: list[tuple[str, str]] = []

        def walk(node: Any) -> None:
            for child in reversed(node.childNodes()):
                if child.type() in kinds:
                    found.append((child.name(), child.uniqueId().toString()))
                walk(child)

        walk(self._doc.rootNode())
        return found

    def node(self, uid: str) -> Any:
        """The layer with this uniqueId, or None when there is none (deleted, undone)."""
        if not uid or not uid.startswith("{"):
            return None
        return self._doc.nodeByUniqueID(QUuid(uid))

    def active_layer(self) -> Optional[tuple[str, str]]:
        """(name, uniqueId) of the active layer; None without one (a headless Krita)."""
        node = self._doc.activeNode()
        if node is None or node.parentNode() is None:
            return None
        return node.name(), node.uniqueId().toString()

    def read_node(self, uid: str, region: Bounds, what: str) -> bytes:
        """BGRA of a layer inside ``region``: a paint layer's own pixels, a group's
        composite (its projection, shown or hidden); JobRefused naming ``what`` when the
        layer is gone."""
        node = self.node(uid)
        if node is None:
            raise JobRefused(f"the layer of {what} is no longer in the document: pick another "
                             "in its row, or remove the row")
        read = node.projectionPixelData if node.type() == "grouplayer" else node.pixelData
        return bytes(read(region.x, region.y, region.width, region.height))

    def read_whole_node(self, uid: str, what: str) -> tuple[bytes, Bounds]:
        """BGRA of a layer where it has pixels (its bounds within the canvas)."""
        node = self.node(uid)
        rect = node.bounds() if node is not None else None
        bounds = Bounds(rect.x(), rect.y(), rect.width(), rect.height()).clamped(self.extent) \
            if rect is not None else None
        if bounds is None or bounds.is_empty:
            raise JobRefused(f"the layer of {what} is empty or no longer in the document: "
                             "pick another, or remove the row")
        return self.read_node(uid, bounds, what), bounds

    # ---------------------------------------------------------- settings saved with it
    def read_annotation(self) -> bytes:
        """The plugin's settings saved in this document (b"" when there are none)."""
        if ANNOTATION_TYPE not in self._doc.annotationTypes():
            return b""
        return bytes(self._doc.annotation(ANNOTATION_TYPE))

    def write_annotation(self, data: bytes) -> None:
        """Keep ``data`` in the document (saved in its .kra); when it changes the document
        is marked modified, so Krita offers to save it."""
        if self.read_annotation() == data:
            return
        self._doc.setAnnotation(ANNOTATION_TYPE, ANNOTATION_DESCRIPTION, QByteArray(data))
        self._doc.setModified(True)

    def anchor(self) -> Any:
        """The node new layers go above: the active one, else the topmost."""
        node = self._doc.activeNode()
        if node is None or node.parentNode() is None:
            children = self._doc.rootNode().childNodes()
            node = children[-1] if children else None
        return node

    def undo_text(self) -> Optional[str]:
        """What Edit > Undo would take back now in this document (the action's text), or
        None when this is not the document in front (Edit > Undo acts on that one)."""
        app = Krita.instance()
        action = app.action("edit_undo")
        active = app.activeDocument()
        if action is None or active is None or active != self._doc:
            return None
        return action.text()

    def take_back_layer(self, node: Any, undo_text: Optional[str]) -> bool:
        """Remove the layer ``node`` that ``add_layer`` added, leaving no step in the undo
        history when it can: if Edit > Undo still reads ``undo_text`` (what it read right
        after the layer was added) the newest step is taken back with Edit > Undo, and
        kept undone only when exactly ``node`` went; otherwise (the painter did something
        since, another document is in front) the layer is removed, which is a step.
        Returns whether the undo history was left as before the layer was added."""
        if not self._alive(node):
            return False
        if undo_text and self.undo_text() == undo_text:
            others = self._node_ids(exclude=node)
            app = Krita.instance()
            app.action("edit_undo").trigger()
            self._doc.waitForDone()
            if not self._alive(node) and self._node_ids() == others:
                return True
            app.action("edit_redo").trigger()      # not the step we meant: put it back
            self._doc.waitForDone()
        self.remove_layer(node)
        return False

    def _node_ids(self, exclude: Any = None) -> set[str]:
        skip = str(exclude.uniqueId()) if exclude is not None else None
        ids: set[str] = set()

        def walk(parent: Any) -> None:
            for child in parent.childNodes():
                uid = str(child.uniqueId())
                if uid != skip:
                    ids.add(uid)
                walk(child)

        walk(self._doc.rootNode())
        return ids

    def add_layer(self, name: str, bgra: "bytes | Bands", region: Bounds, above: Any) -> Any:
        """A new paint layer above ``above``: one step in Krita's undo history. ``bgra``
        covers ``region``, or is bands of it (region, BGRA) written one by one."""
        node = self.new_layer(name)
        # Pixels first: adding the layer then updates the canvas once, where writing
        # after it would recomposite the whole image a second time (refreshProjection).
        bands = ((region, bgra),) if isinstance(bgra, (bytes, bytearray)) else bgra
        for bounds, data in bands:
            self.write_band(node, bounds, data)
        return self.place_layer(node, above)

    # A large result lands in these steps, a few at a time (landing.py): the layer made
    # and written outside the document (quick), then added (Krita's one slow call).
    def new_layer(self, name: str) -> Any:
        """A paint layer of this document, not in it yet: writing it changes nothing the
        painter sees, and nothing in the undo history."""
        if not self.is_open():
            raise DocumentClosed(f"the document '{self.name}' was closed")
        return self._doc.createNode(name, "paintlayer")

    def new_group(self, name: str) -> Any:
        """A group layer of this document, not in it yet."""
        if not self.is_open():
            raise DocumentClosed(f"the document '{self.name}' was closed")
        return self._doc.createGroupLayer(name)

    def write_band(self, node: Any, bounds: Bounds, bgra: bytes) -> None:
        """BGRA pixels into ``bounds`` of a layer (a 1 MB band: a few milliseconds).
        Krita shows nothing of it until the layer is added (or the image refreshed)."""
        node.setPixelData(QByteArray(bgra), bounds.x, bounds.y, bounds.width, bounds.height)

    def place_layer(self, node: Any, above: Any) -> Any:
        """Add ``node`` (from ``new_layer``/``new_group``) above ``above`` (or on top of
        the root when that is gone): one step in the undo history. Krita composites the
        layer's pixels into the image and waits for it, running Qt's events meanwhile;
        its longest stretch without them grows with the layer's size (measured by
        tests/host/krita/measure_landing.py)."""
        if not self.is_open():
            raise DocumentClosed(f"the document '{self.name}' was closed")
        parent = self._parent_of(above)
        parent.addChildNode(node, above if above is not None and self._alive(above) else None)
        return node

    def place_in_group(self, group: Any, node: Any, visible: bool) -> None:
        """Add ``node`` on top of ``group``'s layers, shown or hidden: a step in the undo
        history."""
        if not self.is_open():
            raise DocumentClosed(f"the document '{self.name}' was closed")
        node.setVisible(visible)
        group.addChildNode(node, None)        # None: on top of the group's layers

    def scale_image(self, extent: Extent) -> None:
        """Scale the whole image (every layer) to ``extent``, as Image > Scale does: one
        step in Krita's undo history. Krita scales on its own threads; this call (libkis
        ``Document.scaleImage``) waits for them, running Qt's events meanwhile, but with
        stretches of a second at 8192x8192 where Krita's own work holds Qt's thread."""
        if not self.is_open():
            raise DocumentClosed(f"the document '{self.name}' was closed")
        if extent == self.extent:
            return
        self._doc.scaleImage(extent.width, extent.height, int(self._doc.xRes()),
                             int(self._doc.yRes()), SCALE_FILTER)
        self._doc.waitForDone()

    def write_layer(self, node: Any, bgra: bytes, region: Bounds) -> None:
        """Replace ``region`` of ``node``'s pixels; not a step in the undo history.
        Krita recomposites the whole image before this returns (its only way to show
        pixels written from Python): tens of milliseconds at 2048x2048."""
        node.setPixelData(QByteArray(bgra), region.x, region.y, region.width, region.height)
        self._doc.refreshProjection()

    def rename_layer(self, node: Any, name: str) -> None:
        """Not a step in the undo history."""
        node.setName(name)

    def remove_layer(self, node: Any) -> None:
        """Take ``node`` out of the document: one step in Krita's undo history."""
        if self._alive(node):
            node.remove()
            self._doc.refreshProjection()

    def has_layer(self, node: Any) -> bool:
        """Whether ``node`` is in the document (the painter may have deleted it, or
        undone the step that added it)."""
        return self._alive(node)

    def _alive(self, node: Any) -> bool:
        return node is not None and self._doc.nodeByUniqueID(node.uniqueId()) is not None

    def _parent_of(self, node: Any) -> Any:
        if node is not None and self._alive(node):
            parent = node.parentNode()
            if parent is not None:
                return parent
        return self._doc.rootNode()


def active_document() -> Optional[KritaDocument]:
    document = Krita.instance().activeDocument()
    return KritaDocument(document) if document is not None else None


def read_setting(key: str, default: str) -> str:
    return Krita.instance().readSetting(SETTINGS_GROUP, key, default)


def write_setting(key: str, value: str) -> None:
    Krita.instance().writeSetting(SETTINGS_GROUP, key, value)
