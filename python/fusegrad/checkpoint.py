"""Crash-safe checkpoints in safetensors format.

A checkpoint directory holds versioned data files and one small index, ``checkpoint.json``:

    checkpoint.json                 {"format": 1, "step": 1200, "files": {...sha256...}, "config": {...}}
    model-00001200.safetensors      the model's tensors
    optim-00001200.safetensors      the optimizer's tensors (its scalars live in the index)

A save writes and fsyncs the new data files first, then replaces the index atomically
(``os.replace``), then deletes the files the old index named. A process killed at any point
leaves an index that names complete files: the previous checkpoint or the new one. Loading
verifies each file's size and SHA-256, so a truncated or corrupted file raises a
``ValueError`` naming it instead of producing wrong weights.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

INDEX = "checkpoint.json"
FORMAT = 1


def _flatten(obj: Any, prefix: str, arrays: dict, scalars: Any = None):
    """Split a nested dict/list of arrays, Tensors and scalars into flat arrays + a JSON skeleton."""
    from .tensor import Tensor

    if isinstance(obj, np.ndarray):
        arrays[prefix] = obj
        return {"__array__": prefix}
    if isinstance(obj, Tensor):
        arrays[prefix] = obj.data
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, f"{prefix}.{k}" if prefix else str(k), arrays)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, f"{prefix}.{i}" if prefix else str(i), arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store a value of type {type(obj).__name__} at {prefix!r}")


def _unflatten(skel: Any, arrays: dict):
    if isinstance(skel, dict):
        if "__array__" in skel:
            return arrays[skel["__array__"]]
        if "__tensor__" in skel:
            from .tensor import Tensor
            return Tensor(arrays[skel["__tensor__"]])
        if "__dict__" in skel:
            return {k: _unflatten(v, arrays) for k, v in skel["__dict__"]}
        if "__list__" in skel:
            return [_unflatten(v, arrays) for v in skel["__list__"]]
    return skel


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_safetensors(path: Path, arrays: dict, metadata: dict | None = None) -> None:
    from safetensors.numpy import save

    # np.require, not np.ascontiguousarray: that one turns a 0-d array into shape (1,)
    data = save({k: np.require(v, requirements="C") for k, v in arrays.items()}, metadata=metadata)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(directory, model: dict, config: dict | None = None, optimizer: Any = None,
                    step: int = 0, meta: dict | None = None) -> Path:
    """Save ``model`` (name -> array), ``optimizer`` (nested dict of arrays and scalars),
    ``config`` and ``meta`` (JSON-able) to ``directory`` without ever destroying the
    checkpoint that was there before until the new one is complete."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = _state_arrays(model, "save_checkpoint")
    if optimizer is not None and hasattr(optimizer, "state_dict"):
        optimizer = optimizer.state_dict()
    for k, v in model.items():
        if not isinstance(v, np.ndarray):
            raise TypeError(f"save_checkpoint: model[{k!r}] must be a numpy.ndarray, got {type(v).__name__}")
    try:
        old = _read_index(directory) if (directory / INDEX).exists() else None
    except ValueError:
        old = None  # a corrupted index is replaced by this save
    tag = f"{int(step):08d}"
    if old is not None and old.get("step") == int(step):
        tag += "-" + os.urandom(3).hex()  # never overwrite a file the current index names
    files = {}
    model_file = f"model-{tag}.safetensors"
    _write_safetensors(directory / model_file, model)
    files["model"] = model_file
    optim_arrays: dict = {}
    optim_skel = _flatten(optimizer, "", optim_arrays) if optimizer is not None else None
    if optimizer is not None:
        optim_file = f"optim-{tag}.safetensors"
        _write_safetensors(directory / optim_file, optim_arrays)
        files["optim"] = optim_file
    _fsync_dir(directory)
    index = {
        "format": FORMAT, "step": int(step), "config": config or {}, "meta": meta or {},
        "optimizer": optim_skel,
        "files": {k: {"name": n, "bytes": (directory / n).stat().st_size, "sha256": _sha256(directory / n)}
                  for k, n in files.items()},
    }
    tmp = directory / (INDEX + ".tmp")
    with open(tmp, "w") as f:
        json.dump(index, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / INDEX)
    _fsync_dir(directory)
    # Files no index names any more: the old checkpoint's, and leftovers of killed saves.
    live = set(files.values())
    for p in directory.iterdir():
        if p.name.startswith(("model-", "optim-")) and ".safetensors" in p.name and p.name not in live:
            try:
                p.unlink()
            except OSError:
                pass
    return directory


def _read_index(directory: Path) -> dict:
    path = directory / INDEX
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"load_checkpoint: {directory} is a file; a checkpoint is a directory")
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"load_checkpoint: no checkpoint in {directory} ({INDEX} is missing)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"load_checkpoint: {path} is corrupted ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or "files" not in index:
        raise ValueError(f"load_checkpoint: {path} is not a fusegrad checkpoint index (format {FORMAT})")
    return index


def _load_file(directory: Path, entry: dict) -> dict:
    from safetensors.numpy import load

    path = directory / entry["name"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"load_checkpoint: {path} is missing") from None
    if len(data) != entry["bytes"]:
        raise ValueError(f"load_checkpoint: {path} is truncated or corrupted: {len(data)} bytes, expected {entry['bytes']}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ValueError(f"load_checkpoint: {path} is corrupted (SHA-256 mismatch)")
    try:
        return load(data)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"load_checkpoint: {path} is not a valid safetensors file ({e})") from None


def load_checkpoint(directory) -> dict:
    """Load a checkpoint: ``{"model", "optimizer", "config", "meta", "step"}``."""
    directory = Path(directory)
    index = _read_index(directory)
    model = _load_file(directory, index["files"]["model"])
    optimizer = None
    if "optim" in index["files"]:
        optimizer = _unflatten(index["optimizer"], _load_file(directory, index["files"]["optim"]))
    return {"model": model, "optimizer": optimizer, "config": index.get("config", {}),
            "meta": index.get("meta", {}), "step": index.get("step", 0)}


def _state_arrays(model, who: str) -> dict:
    """A Module's state_dict, or a state dict of Tensors, as name -> array."""
    from .tensor import Tensor

    if hasattr(model, "state_dict") and callable(model.state_dict):
        model = model.state_dict()
    if not isinstance(model, dict):
        raise TypeError(f"{who}: model must be a Module or a dict of arrays/Tensors, got {type(model).__name__}")
    return {k: (v.data if isinstance(v, Tensor) else v) for k, v in model.items()}


_SKELETON = "fusegrad.skeleton"


def save(obj, f) -> None:
    """Save a state dict (``model.state_dict()``: name -> Tensor, or an optimizer's nested
    state) to the safetensors file ``f``, atomically: the file is written beside the target,
    fsynced and renamed over it, so a crash leaves the old file or the new one. A flat dict of
    Tensors/arrays is a plain safetensors file that other tools read.

    >>> import fusegrad as fg, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> fg.save({"w": fg.ones(2)}, p); fg.load(p)["w"].tolist()
    [1.0, 1.0]
    """
    from .tensor import Tensor

    if not isinstance(f, (str, os.PathLike)):
        raise TypeError(f"save: f must be a file path, got {type(f).__name__}")
    if not isinstance(obj, dict):
        raise TypeError(f"save: obj must be a dict (a state_dict), got {type(obj).__name__}")
    path = Path(f)
    if path.is_dir():
        raise IsADirectoryError(f"save: {path} is a directory; give a file name")
    if all(isinstance(k, str) and isinstance(v, (Tensor, np.ndarray)) for k, v in obj.items()):
        arrays = {k: (v.data if isinstance(v, Tensor) else v) for k, v in obj.items()}
        kinds = {"__kinds__": {k: ("tensor" if isinstance(v, Tensor) else "array") for k, v in obj.items()}}
        meta = {_SKELETON: json.dumps(kinds)}
    else:
        arrays = {}
        meta = {_SKELETON: json.dumps(_flatten(obj, "", arrays))}
    _write_safetensors(path, arrays, meta)
    _fsync_dir(path.parent)


def load(f) -> dict:
    """Load what ``save`` wrote (a plain safetensors file loads as name -> Tensor)."""
    from collections import OrderedDict

    from safetensors import safe_open

    from .tensor import Tensor

    path = Path(f)
    try:
        with safe_open(str(path), framework="numpy") as sf:
            meta = sf.metadata() or {}
            arrays = {k: sf.get_tensor(k) for k in sf.keys()}
    except FileNotFoundError:
        raise FileNotFoundError(f"load: no such file {path}") from None
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"load: {path} is not a valid safetensors file ({e})") from None
    skel = json.loads(meta[_SKELETON]) if _SKELETON in meta else {"__kinds__": {}}
    if isinstance(skel, dict) and "__kinds__" in skel:
        kinds = skel["__kinds__"]                       # also the saved order (safetensors sorts names)
        names = [k for k in kinds if k in arrays] + [k for k in arrays if k not in kinds]
        return OrderedDict((k, arrays[k] if kinds.get(k) == "array" else Tensor(arrays[k])) for k in names)
    return _unflatten(skel, arrays)
