"""The model layer: finding, loading and holding diffusion models. Never touches the
network except ``hub.pull``.

    store.py        ModelStore / LoadedModel: the public front door (see its docstring)
    sources.py      model name -> ModelSource (tiny, folder, single file, HF cache id)
    loader.py       ModelSource -> diffusers pipeline or ControlNet, offline, safetensors only
    single_file.py  A1111/ComfyUI single-file checkpoints with the shipped configs/
    families.py     sd15 / sdxl / sd2_depth ...: detection and pipeline classes per job kind
    catalog.py      what is on this machine (list of protocol ModelInfo)
    hub.py          `atelier models pull` / `list`: download into and list the HF cache
    device.py       device and dtype choice, memory figures
    compile_modes.py  the torch.compile choices of `serve --compile` (torch-free)
    tiny.py         random-weight miniature models for tests and demos
    ldm_keys.py     diffusers -> original (LDM) key names, to export single files
"""
