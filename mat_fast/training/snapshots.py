"""Training snapshots: the networks as safetensors plus everything needed to resume.

A snapshot is a folder ``snapshot-NNNNNNNNN`` (the number of real images shown so far)
holding ``G.safetensors``, ``G_ema.safetensors``, ``D.safetensors`` (through
``mat_fast.checkpoints``, so ``G_ema.safetensors`` loads in ``load_generator`` and
``Inpainter``), ``state.pt`` (optimisers, step, image count, the fp16 gradient scaler,
every RNG of every rank) and ``options.json``. The folder is written under a temporary
name and renamed into place, and ``latest`` names the newest one, so an interrupted save
never leaves a snapshot that looks whole.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid

import numpy as np
import torch

from ..checkpoints import read_checkpoint_file, read_state_dict, save_generator, save_state_dict
from ..errors import CheckpointError
from ..model import Generator

NETWORKS = ("G", "G_ema", "D")
LATEST = "latest"


def rng_state() -> dict:
    """This process's random states (torch CPU and CUDA, numpy, Python), torch.load-safe."""
    np_state = np.random.get_state()
    return dict(
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        numpy=[np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        python=random.getstate(),
    )


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _save_network(module, path: str) -> None:
    if isinstance(module, Generator):
        save_generator(module, path)  # with the metadata load_generator reads
    else:
        save_state_dict(module.state_dict(), path, metadata={"format": type(module).__name__})


def write_snapshot(run_dir: str, nimg: int, networks: dict, state: dict, options: dict) -> str:
    """Write a snapshot folder atomically; returns its path."""
    name = f"snapshot-{nimg:09d}"
    final = os.path.join(run_dir, name)
    tmp = os.path.join(run_dir, f".{name}.{uuid.uuid4().hex}.tmp")
    os.makedirs(tmp)
    try:
        for key in NETWORKS:
            _save_network(networks[key], os.path.join(tmp, f"{key}.safetensors"))
        torch.save(state, os.path.join(tmp, "state.pt"))
        with open(os.path.join(tmp, "options.json"), "w") as f:
            json.dump(options, f, indent=2, sort_keys=True)
        if os.path.isdir(final):  # the same image count again (a rerun): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = os.path.join(run_dir, f".{LATEST}.{uuid.uuid4().hex}.tmp")
    with open(pointer, "w") as f:
        f.write(name + "\n")
    os.replace(pointer, os.path.join(run_dir, LATEST))
    return final


def find_snapshot(path: str) -> str:
    """A snapshot folder, or a run folder (its ``latest`` snapshot)."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isfile(os.path.join(path, "state.pt")):
        return path
    pointer = os.path.join(path, LATEST)
    if os.path.isfile(pointer):
        with open(pointer) as f:
            return os.path.join(path, f.read().strip())
    raise CheckpointError(
        f"--resume {path}: neither a snapshot folder (with state.pt) nor a run folder with a "
        f"'{LATEST}' file; pass the run's output folder or one of its snapshot-* folders"
    )


def read_snapshot(path: str) -> dict:
    """``{'G': sd, 'G_ema': sd, 'D': sd, 'state': dict, 'options': dict, 'path': folder}``."""
    folder = find_snapshot(path)
    out: dict = {"path": folder}
    for key in NETWORKS:
        out[key] = read_state_dict(os.path.join(folder, f"{key}.safetensors"))
    out["state"] = read_checkpoint_file(os.path.join(folder, "state.pt"))
    with open(os.path.join(folder, "options.json")) as f:
        out["options"] = json.load(f)
    return out
