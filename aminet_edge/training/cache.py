"""Feature cache: the backbone is frozen and training uses no augmentation, so each image's features
are computed once and the transformer trains on the cache.

Where the cache lives (`cache_placement`): on the training GPU when it fits in a memory budget
(default CACHE_GPU_FRACTION of the GPU memory free once the models are loaded), else in host memory
(RAM, or a .npy memmap with `cache_dir`), from which `FeatureBatches` gathers each batch into a pinned
staging buffer and copies it with non_blocking=True while the previous step still runs. On the CPU it is
simply in RAM (or the memmap). Its dtype (float32, float16, bfloat16) is chosen independently.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from aminet_edge import config
from aminet_edge.config import TileConfig
from aminet_edge.data.batches import load_batches, tile_count
from aminet_edge.files import atomic_write_text
from aminet_edge.model.features import FeatureExtractor

log = logging.getLogger("aminet_edge.training")

CACHE_DTYPES = {name: getattr(torch, name) for name in config.CACHE_DTYPES}
CACHE_GPU_FRACTION = 0.5  # of free GPU memory: the rest is for activations (paper preset, batch 8: a few GB)


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 (hex) of a module's state: every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _cache_key(paths: Sequence[str | Path], extractor: FeatureExtractor, image_size: int, mean: Sequence[float],
               std: Sequence[float], dtype: str, tile: TileConfig | None = None) -> str:
    """Everything the cached features depend on: the images (path, size, mtime), the backbone's name and
    weights, and the preprocessing (size, mean/std, cache dtype, tiling)."""
    h = hashlib.sha256()
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    prep = [float(v) for v in (*mean, *std)]
    h.update(f"{extractor.name}|{weights_digest(extractor)}|{image_size}|{prep!r}|{dtype}".encode())
    if tile is not None:  # untiled keys stay as they were
        h.update(f"|tile {tile.size} {tile.overlap}".encode())
    return h.hexdigest()[:16]


def cache_nbytes(n: int, channels: int, side: int, dtype: str) -> int:
    """Bytes of a cache of n feature maps (channels, side, side) in `dtype`."""
    return n * channels * side * side * CACHE_DTYPES[dtype].itemsize


def cache_placement(nbytes: int, device: torch.device, budget_bytes: int | None = None,
                    free_bytes: int | None = None) -> torch.device:
    """Where a cache of `nbytes` lives when training on `device`: the device itself when it is a GPU and
    nbytes <= budget, else the CPU (host memory).

    budget_bytes: None = CACHE_GPU_FRACTION * free_bytes; 0 forces host memory. free_bytes: free GPU
    memory, None = ask torch (`torch.cuda.mem_get_info`).
    """
    if device.type != "cuda":
        return torch.device("cpu")
    if budget_bytes is None:
        free = free_bytes if free_bytes is not None else torch.cuda.mem_get_info(device)[0]
        budget_bytes = int(CACHE_GPU_FRACTION * free)
    return device if nbytes <= budget_bytes else torch.device("cpu")


def build_feature_cache(extractor: FeatureExtractor, paths: Sequence[str | Path], image_size: int,
                        mean: Sequence[float], std: Sequence[float], dtype: str = "float32",
                        cache_dir: str | Path | None = None, batch_size: int = 8, progress: bool = True,
                        workers: int = 0, place: torch.device | None = None,
                        tile: TileConfig | None = None) -> torch.Tensor:
    """Features of every image, (N, C, S/4, S/4) in `dtype`, stored on `place` (default: the CPU); with
    `tile`, of every tile of every image (N = data.batches.tile_count).

    The extractor runs on its own device; images are decoded in `workers` DataLoader processes.
    With `cache_dir`, features live in a .npy memmap there (float32/float16 only) and a later call with
    the same images (path, size, mtime), backbone weights, preprocessing and dtype reuses it instead of
    recomputing (see `_cache_key`); with a GPU `place`, the memmap's contents are then copied there.
    """
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"cache dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}")
    place = place or torch.device("cpu")
    on = next(extractor.parameters()).device
    n, side = tile_count(paths, tile), image_size // 4
    shape = (n, extractor.channels, side, side)
    store: np.ndarray | torch.Tensor
    if cache_dir is not None:
        if dtype == "bfloat16":
            raise ValueError("a disk cache holds float32 or float16 (numpy has no bfloat16)")
        key = _cache_key(paths, extractor, image_size, mean, std, dtype, tile)
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        file, meta = cache_dir / f"features-{key}.npy", cache_dir / f"features-{key}.json"
        kept = _kept(file, meta, shape, np.dtype(dtype))
        if kept is not None:
            return torch.from_numpy(kept).to(place)
        store = np.lib.format.open_memmap(file, mode="w+", dtype=np.dtype(dtype), shape=shape)
    else:
        store = torch.empty(shape, dtype=CACHE_DTYPES[dtype], device=place)
    done = 0
    bar = tqdm(total=n, desc="caching features", unit="img", disable=not progress)
    for batch in load_batches(paths, image_size, mean, std, batch_size, workers, pin_memory=on.type == "cuda",
                              tile=tile):
        feats = extractor(batch.to(on, non_blocking=True))
        if isinstance(store, np.ndarray):
            store[done:done + len(batch)] = feats.cpu().numpy().astype(store.dtype)
        else:
            store[done:done + len(batch)] = feats.to(store.device, store.dtype)
        done += len(batch)
        bar.update(len(batch))
    bar.close()
    if isinstance(store, np.ndarray):
        store.flush()
        atomic_write_text(meta, json.dumps({"complete": True, "paths": [str(p) for p in paths], "shape": list(shape)}))
        return torch.from_numpy(store).to(place)
    return store


def _kept(file: Path, meta: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """The cached features in `file` (memory-mapped) when `meta` marks them complete and they have `shape`
    and `dtype`; None when absent, or (with a warning: they are computed again and replaced) unreadable,
    incomplete or of another shape (a write cut short, an edited file)."""
    if not (file.is_file() and meta.is_file()):
        return None
    try:
        if json.loads(meta.read_text()).get("complete") is not True:
            raise ValueError("not marked complete")
        kept = np.load(file, mmap_mode="r+")
        if kept.shape != shape or kept.dtype != dtype:
            raise ValueError(f"holds {kept.dtype} {kept.shape}, expected {dtype} {shape}")
        return kept
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("feature cache %s not used (%s): computing the features again", file, exc)
        return None


class FeatureBatches:
    """Training batches from a feature cache, as float32 on the training `device`.

    feats: (N, C, h, w) cache on `device` (gathered there) or on the CPU. A CPU cache for a GPU is
    gathered into one of two pinned staging buffers and copied non_blocking; each buffer's copy is
    awaited (CUDA event) before the buffer is refilled, so the gather of batch i+1 overlaps step i.
    """

    def __init__(self, feats: torch.Tensor, device: torch.device, batch_size: int) -> None:
        self.feats, self.device = feats, device
        self.staged = feats.device.type == "cpu" and device.type == "cuda"
        if self.staged:
            shape = (batch_size, *feats.shape[1:])
            self.buffers = [torch.empty(shape, dtype=feats.dtype, pin_memory=True) for _ in range(2)]
            self.events: list[torch.cuda.Event | None] = [None, None]
            self.turn = 0

    def __len__(self) -> int:
        return self.feats.shape[0]

    def order(self, generator: torch.Generator) -> torch.Tensor:
        """A random permutation of the cache's rows drawn from `generator` (on its device), on the
        cache's device (one copy per epoch when they differ)."""
        return torch.randperm(len(self), generator=generator, device=generator.device).to(self.feats.device)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` (a slice of `order`) -> (len(idx), C, h, w) float32 on the device."""
        if not self.staged:
            return self.feats[idx].to(self.device).float()
        k, buf = self.turn, self.buffers[self.turn]
        self.turn = 1 - k
        event = self.events[k]
        if event is not None:
            event.synchronize()  # this buffer's previous copy must be done before we overwrite it
        staged = buf[:len(idx)]
        torch.index_select(self.feats, 0, idx, out=staged)
        out = staged.to(self.device, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.events[k] = done
        return out.float()
