"""``atelier``: serve, generate, demo, models list|pull, tiny."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence, get_args

from protocol.client import AtelierClient, ClientError, default_url, make_upload, DEFAULT_PORT
from protocol.errors import ProtocolError
from protocol.events import JobDone
from protocol.frames import ImageFrame, PixelFormat
from protocol.messages import (CONTROL_KINDS, SCHEDULERS, TEXTURE_MAPS, TILINGS, Cancelled,
                               ControlLayer, DepthInput, GenerateRequest, Progress,
                               ReferenceFlavour, ReferenceImage, TextureSettings,
                               UpscaleSettings)

from .allocator import keep_freed_memory
from .limits import ServerLimits
from .models import compile_modes
from .server import ServerConfig, is_loopback


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.run(args)
    except (ClientError, ProtocolError, FileNotFoundError, ValueError) as exc:
        print(f"atelier: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# ------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atelier", description="Atelier diffusion daemon and tools")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the daemon")
    _daemon_options(serve)
    _server_options(serve)
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(run=_serve)

    gen = sub.add_parser("generate", help="send a job to a daemon (or run one in-process)")
    _daemon_options(gen)
    _request_options(gen)
    gen.add_argument("--url", help=f"daemon address (default {default_url()}; when nothing "
                                   "answers there, a daemon is started in-process)")
    gen.add_argument("--token", default=os.environ.get("ATELIER_TOKEN"))
    gen.add_argument("--out", type=Path, default=Path("out"), help="folder for the PNGs")
    gen.set_defaults(run=_generate)

    demo = sub.add_parser("demo", help="txt2img, img2img and inpaint round trip through the "
                                       "real protocol on an in-process daemon")
    _daemon_options(demo)
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.add_argument("--size", type=int, default=128)
    demo.add_argument("--steps", type=int, default=8)
    demo.set_defaults(run=_demo)

    models = sub.add_parser("models", help="list local models or pull one from the hub")
    msub = models.add_subparsers(required=True, metavar="ACTION")
    ls = msub.add_parser("list", help="models available locally")
    ls.add_argument("--models-dir", action="append", type=Path, default=[],
                    help="an A1111/ComfyUI models folder or a folder of checkpoints (repeatable)")
    ls.add_argument("--home", type=Path, default=None)
    ls.set_defaults(run=_models_list)
    pull = msub.add_parser("pull", help="download a model from the Hugging Face hub into its cache")
    pull.add_argument("model_id")
    pull.add_argument("--revision", default="main")
    pull.add_argument("--variant", default=None, choices=["fp16"],
                      help="prefer half-precision weight files where the repo has them")
    pull.set_defaults(run=_models_pull)

    tiny = sub.add_parser("tiny", help="build the random-weight tiny model (it draws noise)")
    tiny.add_argument("dest", type=Path, nargs="?", default=None)
    tiny.add_argument("--home", type=Path, default=None)
    tiny.set_defaults(run=_tiny)

    from .cluster.cli import add_cluster_parser   # imports no Ray: only running it does
    add_cluster_parser(sub, _daemon_options, _server_options)
    return p


def _server_options(p: argparse.ArgumentParser) -> None:
    """Listening address, token, origins and limits: ``serve`` and ``cluster serve``."""
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; others need a token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--token", default=os.environ.get("ATELIER_TOKEN"),
                   help="token clients must send (env ATELIER_TOKEN); generated for "
                        "non-loopback hosts when not given")
    p.add_argument("--allow-origin", action="append", default=[],
                   help="browser origin allowed to connect (repeatable; none by default)")
    defaults = ServerLimits()
    p.add_argument("--max-side", type=int, default=defaults.max_side)
    p.add_argument("--max-batch", type=int, default=defaults.max_batch)
    p.add_argument("--max-steps", type=int, default=defaults.max_steps)
    p.add_argument("--max-queue", type=int, default=defaults.max_queue)
    p.add_argument("--max-message-mb", type=float,
                   default=defaults.max_message_bytes / 2 ** 20)
    p.add_argument("--max-upload-mb", type=float,
                   default=defaults.max_upload_bytes / 2 ** 20,
                   help="upload MiB held for one client: waiting uploads and its queued jobs'")
    p.add_argument("--max-total-upload-mb", type=float,
                   default=defaults.max_total_upload_bytes / 2 ** 20,
                   help="the same for all clients together")
    p.add_argument("--max-connections", type=int, default=defaults.max_connections)
    p.add_argument("--max-outbox-mb", type=float,
                   default=defaults.max_outbox_bytes / 2 ** 20,
                   help="unsent MiB to one client before it is disconnected")


def _daemon_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny",
                   help="'tiny', a Hugging Face id in the local cache, a diffusers folder or a "
                        ".safetensors checkpoint (default tiny)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--resident-gb", type=float, default=8.0,
                   help="memory for recently used models kept beside the active one, so jobs "
                        "naming them switch without reloading (0: only the active one)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    p.add_argument("--low-memory", action="store_true",
                   help="for 8 GB cards: model CPU offload and tiled VAE decode (slower)")
    p.add_argument("--compile", default=compile_modes.AUTO, choices=compile_modes.CHOICES,
                   help="torch.compile of UNet and VAE decoder: auto (on CUDA GPUs), off, or an "
                        "inductor mode on any device; reduce-overhead adds CUDA graphs "
                        "(default auto)")
    p.add_argument("--depth-control", action="append", default=[], metavar="FAMILY=NAME",
                   type=_family_and_name,
                   help="the depth ControlNet or T2I-Adapter jobs of a model family use when "
                        "they name none, e.g. sd15=TencentARC/t2iadapter_depth_sd15v2 "
                        "(an adapter runs once per job, a ControlNet at every step; repeatable)")
    p.add_argument("--models-dir", action="append", type=Path, default=[],
                   help="an A1111/ComfyUI models folder or a folder of checkpoints (repeatable)")
    p.add_argument("--model-part", action="append", type=Path, default=[], metavar="FILE",
                   help="a text encoder or VAE file for Flux/SD3 transformer files (ComfyUI's "
                        "clip_l, clip_g, t5xxl, ae.safetensors), tried before the models "
                        "folders' text_encoders/, clip/ and vae/ (repeatable)")
    p.add_argument("--home", type=Path, default=None,
                   help="Atelier's own folder (default $ATELIER_HOME or ~/.cache/atelier)")


def _family_and_name(text: str) -> tuple[str, str]:
    family, sep, name = text.partition("=")
    if not sep or not family or not name:
        raise argparse.ArgumentTypeError(f"expected FAMILY=NAME (e.g. sdxl=some/adapter), got {text!r}")
    return family, name


def _request_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", default=None,
                   choices=["txt2img", "img2img", "inpaint", "make_seamless", "preprocess",
                            "upscale", "texture_set"],
                   help="default: txt2img, img2img with --init, inpaint with --mask; preprocess "
                        "writes the control image of the one --control-from; upscale makes "
                        "--init larger (--scale, --upscaler, --refine); texture_set writes PBR "
                        "maps of --init (--maps)")
    p.add_argument("--prompt", "-p", default="")
    p.add_argument("--negative", default="")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default: the model's recommended, 20 for SD)")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance (default: the model's recommended, 7.0 for SD)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--scheduler", default="euler_a", choices=SCHEDULERS)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--strength", type=float, default=0.75)
    p.add_argument("--init", type=Path, help="init image (img2img / inpaint / make_seamless)")
    p.add_argument("--mask", type=Path, help="mask image, white = repaint")
    p.add_argument("--grow", type=int, default=0, help="grow the mask by N pixels")
    p.add_argument("--feather", type=int, default=0, help="feather the mask edge by N pixels")
    p.add_argument("--tiling", default="none", choices=TILINGS)
    p.add_argument("--depth", type=Path, help="depth map: .npy float32 (distance) or an image "
                                              "(normalised, white = near)")
    p.add_argument("--control", action="append", default=[], type=_control_arg,
                   metavar="KIND=FILE[@SCALE]",
                   help=f"a control image, e.g. lineart=lines.png@0.8 (repeatable; kinds: "
                        f"{', '.join(CONTROL_KINDS)}; line images light on dark)")
    p.add_argument("--control-from", action="append", default=[], type=_control_arg,
                   metavar="KIND=FILE[@SCALE]",
                   help="a plain picture the daemon makes the control image from, e.g. "
                        "canny=photo.png (repeatable)")
    p.add_argument("--reference", action="append", default=[], type=_reference_arg,
                   metavar="[style=]FILE[@WEIGHT]",
                   help="a picture whose subject (or with style=, whose style) the image "
                        "borrows through an IP-Adapter, e.g. style=painting.png@0.8 "
                        "(repeatable, up to 4; weight 0..2, default 0.6)")
    p.add_argument("--preview-every", type=int, default=0)
    p.add_argument("--cache-interval", type=int, default=1,
                   help="run the whole UNet every N-th step only, reusing its deep features "
                        "in between (faster, slightly different images; default 1 = off)")
    p.add_argument("--scale", type=float, default=None,
                   help="upscale: the init's size times this (else --width x --height)")
    p.add_argument("--upscaler", default=None,
                   help="upscale: a super-resolution model (.safetensors in models/ESRGAN or "
                        "upscale_models); default Lanczos")
    p.add_argument("--refine", type=float, default=0.0,
                   help="upscale: strength of the tiled refine with the prompt (0 = none)")
    p.add_argument("--tile", type=int, default=0,
                   help="upscale: refine tile side in pixels (0 = the model's native size)")
    p.add_argument("--maps", nargs="+", default=["normal", "height", "roughness"],
                   choices=TEXTURE_MAPS, help="texture_set: the maps to make")
    p.add_argument("--texture-source", default="auto", choices=["auto", "marigold", "image"],
                   help="texture_set: Marigold models, the colour itself, or Marigold where cached")
    p.add_argument("--normal-strength", type=float, default=8.0,
                   help="texture_set: relief of normals made from height (pixels over the range)")
    p.add_argument("--format", default="raw", choices=["raw", "png"],
                   help="how results travel (raw RGBA on loopback is cheapest)")


# ------------------------------------------------------------------- daemon
def _home(args: argparse.Namespace) -> Path:
    if args.home is not None:
        return args.home
    return Path(os.environ.get("ATELIER_HOME", Path.home() / ".cache" / "atelier"))


def _build_daemon(args: argparse.Namespace, config: ServerConfig):
    from diffusers.utils import logging as diffusers_logging

    from .app import create_daemon  # imports torch/diffusers: only when a daemon is wanted

    # diffusers warns on every pipeline kind built from the shared components (a dtype
    # cast of nothing); our own log says what matters.
    if not getattr(args, "verbose", False):
        diffusers_logging.set_verbosity_error()

    return create_daemon(config, model=args.model, **store_options(args))


def store_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``_daemon_options`` as ``app.create_store``'s keyword arguments (less ``model``)."""
    return dict(device=args.device, dtype=args.dtype, home=_home(args),
                models_dirs=list(args.models_dir), low_memory=args.low_memory,
                compile=args.compile, depth_controls=dict(args.depth_control),
                resident_bytes=int(args.resident_gb * 2 ** 30),
                model_parts=list(args.model_part))


def ws_url(host: str, port: int) -> str:
    """The address clients connect to; an IPv6 literal goes in brackets (RFC 3986)."""
    return f"ws://[{host}]:{port}/" if ":" in host else f"ws://{host}:{port}/"


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The ``_server_options`` as a ServerConfig; a token is generated (and shown) when
    the address is not loopback and none was given."""
    token = args.token
    if not is_loopback(args.host) and not token:
        token = secrets.token_urlsafe(24)
        print(f"Listening on {args.host} needs a token; generated one for this run:\n  {token}\n"
              "Give it to clients (or set ATELIER_TOKEN before starting).", flush=True)
    limits = ServerLimits(max_side=args.max_side, max_pixels=args.max_side ** 2,
                          max_batch=args.max_batch, max_steps=args.max_steps,
                          max_queue=args.max_queue,
                          max_message_bytes=int(args.max_message_mb * 2 ** 20),
                          max_upload_bytes=int(args.max_upload_mb * 2 ** 20),
                          max_total_upload_bytes=int(args.max_total_upload_mb * 2 ** 20),
                          max_connections=args.max_connections,
                          max_outbox_bytes=int(args.max_outbox_mb * 2 ** 20))
    return ServerConfig(host=args.host, port=args.port, token=token,
                        allowed_origins=tuple(args.allow_origin), limits=limits,
                        spool_dir=_home(args) / "spool")


def _serve(args: argparse.Namespace) -> int:
    config = server_config(args)
    # Before the model loads: every job after reuses the memory its activations freed.
    if keep_freed_memory():
        logging.getLogger("atelier.allocator").info("malloc keeps freed memory for reuse")
    daemon = _build_daemon(args, config)

    async def run() -> None:
        port = await daemon.start()
        print(f"Atelier daemon ready on {ws_url(args.host, port)} "
              f"(model {daemon.models.current_name()}, device {daemon.models.device})", flush=True)
        loop = asyncio.get_running_loop()
        stopping = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: stopping.done() or stopping.set_result(None))
        try:
            await stopping
        finally:
            await daemon.stop()

    asyncio.run(run())
    return 0


class _InProcess:
    """A daemon in this process when no daemon answers."""

    def __init__(self, args: argparse.Namespace):
        from .server import DaemonThread

        print(f"starting an in-process daemon on model {args.model} ...", file=sys.stderr)
        self.thread = DaemonThread(_build_daemon(args, ServerConfig(port=0))).start()

    def close(self) -> None:
        self.thread.stop()


def _connect(url: Optional[str], token: Optional[str], args: argparse.Namespace):
    """A connected client, and the in-process daemon it uses when no URL was given."""
    local = None
    if url is None:
        probe = AtelierClient(default_url(), token=token, reconnect=False, connect_timeout=1.0,
                              client_name="atelier-cli")
        probe.start()
        try:
            probe.wait_connected(timeout=2.0)
            return probe, None
        except ClientError:
            probe.close()
        local = _InProcess(args)
        url = local.thread.url
    client = AtelierClient(url, token=token, reconnect=False, client_name="atelier-cli").start()
    client.wait_connected(timeout=10.0)
    return client, local


# ------------------------------------------------------------------- generate
def _read_image(path: Path, mode: str, fmt: PixelFormat) -> ImageFrame:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert(mode)
        return make_upload(fmt, im.width, im.height, im.tobytes())


def _read_depth(path: Path) -> tuple[ImageFrame, DepthInput]:
    if path.suffix.lower() == ".npy":
        import numpy as np

        depth = np.load(path).astype("<f4")
        if depth.ndim != 2:
            raise ValueError(f"{path}: a depth map must be 2-D, got shape {depth.shape}")
        frame = make_upload(PixelFormat.FLOAT32, depth.shape[1], depth.shape[0], depth.tobytes())
        return frame, DepthInput(upload=frame.id, convention="distance", background_at=1e9)
    frame = _read_image(path, "L", PixelFormat.GRAY8)
    return frame, DepthInput(upload=frame.id, convention="normalized")


def _control_arg(text: str) -> tuple[str, Path, float]:
    """``KIND=FILE[@SCALE]`` -> (kind, file, scale)."""
    kind, sep, rest = text.partition("=")
    path, _, scale = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if not sep or kind not in CONTROL_KINDS or not path:
        raise argparse.ArgumentTypeError(
            f"expected KIND=FILE[@SCALE] with KIND one of {', '.join(CONTROL_KINDS)}, got {text!r}")
    try:
        return kind, Path(path), float(scale) if scale else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"the scale in {text!r} is not a number") from None


REFERENCE_FLAVOURS = get_args(ReferenceFlavour)
REFERENCE_WEIGHT = ReferenceImage(image="").weight     # the protocol's default


def _reference_arg(text: str) -> tuple[str, Path, float]:
    """``[style=|content=]FILE[@WEIGHT]`` -> (flavour, file, weight)."""
    flavour, sep, rest = text.partition("=")
    if not sep or flavour not in REFERENCE_FLAVOURS:
        flavour, rest = "content", text
    path, _, weight = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if not path:
        raise argparse.ArgumentTypeError(f"expected [style=]FILE[@WEIGHT], got {text!r}")
    try:
        return flavour, Path(path), float(weight) if weight else REFERENCE_WEIGHT
    except ValueError:
        raise argparse.ArgumentTypeError(f"the weight in {text!r} is not a number") from None


def _control_layers(args: argparse.Namespace) -> tuple[list[ControlLayer], list[ImageFrame]]:
    layers, uploads = [], []
    for preprocess, given in ((False, args.control), (True, args.control_from)):
        for kind, path, scale in given:
            frame = _read_image(path, "RGBA", PixelFormat.RGBA8)
            uploads.append(frame)
            layers.append(ControlLayer(kind=kind, image=frame.id, scale=scale,
                                       preprocess=preprocess))
    return layers, uploads


def request_from_args(args: argparse.Namespace) -> tuple[GenerateRequest, list[ImageFrame]]:
    uploads: list[ImageFrame] = []
    fields: dict[str, Any] = {}
    if args.init:
        init = _read_image(args.init, "RGBA", PixelFormat.RGBA8)
        uploads.append(init)
        fields.update(init_image=init.id, width=init.width, height=init.height)
    if args.mask:
        mask = _read_image(args.mask, "L", PixelFormat.GRAY8)
        uploads.append(mask)
        fields["mask"] = mask.id
    if args.depth:
        frame, depth = _read_depth(args.depth)
        uploads.append(frame)
        fields["depth"] = depth
    controls, control_uploads = _control_layers(args)
    if controls:
        uploads.extend(control_uploads)
        fields["controls"] = controls
        if args.kind == "preprocess" and not args.init:
            first = control_uploads[0]    # a preprocess result is as large as its picture
            fields.update(width=first.width, height=first.height)
    for flavour, path, weight in args.reference:
        frame = _read_image(path, "RGBA", PixelFormat.RGBA8)
        uploads.append(frame)
        fields.setdefault("references", []).append(
            ReferenceImage(image=frame.id, weight=weight, flavour=flavour))
    kind = args.kind or ("inpaint" if args.mask else "img2img" if args.init else "txt2img")
    if args.width:
        fields["width"] = args.width
    if args.height:
        fields["height"] = args.height
    if kind == "upscale":
        fields["upscale"] = UpscaleSettings(scale=args.scale, upscaler=args.upscaler,
                                            refine_strength=args.refine, tile=args.tile)
    elif kind == "texture_set":
        fields["texture"] = TextureSettings(maps=list(args.maps), source=args.texture_source,
                                            normal_strength=args.normal_strength)
    job = GenerateRequest(kind=kind, prompt=args.prompt, negative_prompt=args.negative,
                          steps=args.steps, guidance=args.guidance, seed=args.seed,
                          scheduler=args.scheduler, batch_size=args.batch,
                          strength=args.strength, mask_grow=args.grow,
                          mask_feather=args.feather, tiling=args.tiling,
                          preview_every=args.preview_every, output_format=args.format,
                          cache_interval=args.cache_interval,
                          **fields)
    return job, uploads


class ProgressBar:
    def __init__(self, label: str, stream=sys.stderr):
        self.label = label
        self.stream = stream

    def __call__(self, event: Any) -> None:
        if isinstance(event, Progress):
            width = 30
            filled = width * event.step // max(event.total, 1)
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{event.step}/{event.total}")
            self.stream.flush()

    def done(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def write_results(done: JobDone, out: Path, stem: str) -> list[Path]:
    """PNG files with the generation parameters in their text chunks."""
    from .generation import Pixels
    from .outputs import encode_png, png_text

    out.mkdir(parents=True, exist_ok=True)
    written = []
    params = done.result.params
    for info, frame in zip(done.result.images, done.images):
        label = f"-{info.label}" if info.label else ""     # a texture set's map names
        path = out / f"{stem}-{info.seed}-{info.index}{label}.png"
        if frame.format == PixelFormat.PNG:
            path.write_bytes(frame.data)  # the daemon embedded the parameters already
        else:
            pixels = Pixels(frame.width, frame.height, frame.data)
            path.write_bytes(encode_png(pixels, png_text(params, info.seed, done.result.model)))
        written.append(path)
    return written


def run_and_write(client: AtelierClient, job: GenerateRequest, uploads: list[ImageFrame],
                  out: Path, stem: str) -> list[Path]:
    bar = ProgressBar(job.kind)
    outcome = client.run_job(job, uploads, on_event=bar)
    bar.done()
    if isinstance(outcome, Cancelled):
        raise ClientError(f"job {outcome.job_id} was cancelled")
    return write_results(outcome, out, stem)


def _generate(args: argparse.Namespace) -> int:
    job, uploads = request_from_args(args)
    client, local = _connect(args.url, args.token, args)
    try:
        for path in run_and_write(client, job, uploads, args.out, job.kind):
            print(path)
    finally:
        client.close()
        if local:
            local.close()
    return 0


# ------------------------------------------------------------------- demo
def _demo(args: argparse.Namespace) -> int:
    """The main job: the three pipelines through the real protocol, images written to --out."""
    from PIL import Image

    size, steps = args.size, args.steps
    local = _InProcess(args)
    client = AtelierClient(local.thread.url, client_name="atelier-demo", reconnect=False).start()
    try:
        client.wait_connected()
        welcome = client.welcome
        print(f"daemon: model {welcome.model} on {welcome.device}")
        if welcome.model == "tiny":
            print("note: the tiny model has random weights; its images are noise by design")
        common = dict(prompt="a mossy stone wall, seamless texture", width=size, height=size,
                      steps=steps, seed=1234, preview_every=max(1, steps // 4))
        started = time.perf_counter()
        [first] = run_and_write(client, GenerateRequest(kind="txt2img", **common), [], args.out,
                                "txt2img")
        with Image.open(first) as im:
            init = make_upload(PixelFormat.RGBA8, im.width, im.height, im.convert("RGBA").tobytes())
        [second] = run_and_write(client, GenerateRequest(kind="img2img", init_image=init.id,
                                                         strength=0.6, **common),
                                 [init], args.out, "img2img")
        mask_image = Image.new("L", (size, size), 0)
        mask_image.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
        mask = make_upload(PixelFormat.GRAY8, size, size, mask_image.tobytes())
        init = make_upload(PixelFormat.RGBA8, size, size, init.data)
        [third] = run_and_write(client, GenerateRequest(kind="inpaint", init_image=init.id,
                                                        mask=mask.id, mask_feather=4,
                                                        strength=1.0, **common),
                                [init, mask], args.out, "inpaint")
        for path in (first, second, third):
            print(path)
        print(f"three jobs in {time.perf_counter() - started:.2f} s")
    finally:
        client.close()
        local.close()
    return 0


# ------------------------------------------------------------------- models
def _models_list(args: argparse.Namespace) -> int:
    from .app import list_models

    catalog = list_models(home=_home(args), models_dirs=list(args.models_dir))
    for info in catalog.models:
        print(f"{info.name}\t{info.family}\t{info.source}\t{info.path or ''}")
    for problem in catalog.problems:
        print(f"atelier: skipped {problem.path}: {problem.message}", file=sys.stderr)
    return 0


def _models_pull(args: argparse.Namespace) -> int:
    from .models.hub import pull

    def progress(name: str, done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                         f"{done / 2 ** 20:,.1f}/{total / 2 ** 20:,.1f} MiB  {name[-40:]:<40}")
        sys.stderr.flush()

    result = pull(args.model_id, progress, revision=args.revision, variant=args.variant)
    sys.stderr.write("\n")
    print(f"{args.model_id}: {len(result.files)} files, {result.bytes / 2 ** 20:,.1f} MiB in "
          f"{result.path}\nuse it with: atelier serve --model {args.model_id}")
    return 0


def _tiny(args: argparse.Namespace) -> int:
    from .models.tiny import build_tiny_model

    dest = args.dest or _home(args) / "models" / "tiny"
    print(build_tiny_model(dest))
    return 0
