"""Atelier on a Ray Serve cluster: one address over many GPUs and hosts (``atelier cluster
serve``). Ray is the optional extra ``atelier[cluster]``: only the modules that need it import
it (``deployments``, ``app``, ``routing``); ``fair_queue`` and ``config`` are plain Python."""
