"""Helpers shared by the model-layer tests: a fake Hugging Face cache layout, a
header-only checkpoint writer, a compile backend that counts graphs and a loopback
stand-in for the hub (fake_hub.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def put_in_hf_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """Lay ``folder`` out as the hub cache does: content-addressed blobs, a snapshot of
    symlinks to them and ``refs/main`` naming the commit. Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def write_shaped_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A safetensors file with the given tensor names and shapes (zeros): enough for
    code that reads only the header, at a few bytes per tensor where shapes are small."""
    save_file({name: torch.zeros(shape) for name, shape in shapes.items()}, str(path))
    return path


class CompileCounter:
    """A ``torch.compile`` backend (the documented custom-backend hook) that runs dynamo's
    graph capture and guards and counts the graphs it is handed; they run uncompiled. The
    GPU default (inductor) changes the kernels, not the capture and guards tested with it.
    ``len()`` is the number of graphs compiled so far."""

    def __init__(self) -> None:
        self.graphs: list[int] = []     # node count of each graph
        # Dynamo keeps compiled code per code object (the VAE decoder's ``forward`` is one
        # for every model of the session) and stops compiling one after
        # ``recompile_limit`` backends or guards: each test's new counter starts clean.
        torch._dynamo.reset()

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs.append(len(graph.graph.nodes))
        return graph.forward

    def __len__(self) -> int:
        return len(self.graphs)


def save_tiny_dpt(folder: Path) -> Path:
    """A random-weight DPT depth estimator small enough to build in a test, saved as a
    downloaded one is (safetensors weights, config, image processor)."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=37, image_size=32, patch_size=8,
                       neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16,
                       backbone_out_indices=[0, 1, 2, 3], reassemble_factors=[4, 2, 1, 0.5])
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
