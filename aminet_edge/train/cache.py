"""Feature cache: the backbone is frozen and training uses no augmentation, so each image's features
are computed once and the transformer trains on the cache (in memory, or a .npy memmap on disk)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from aminet_edge import config
from aminet_edge.data.images import read_batches
from aminet_edge.model.features import FeatureExtractor

CACHE_DTYPES = {name: getattr(torch, name) for name in config.CACHE_DTYPES}


def load_batches(paths: Sequence[str | Path], image_size: int, mean: Sequence[float], std: Sequence[float],
                 batch_size: int) -> Iterator[torch.Tensor]:
    """Yield preprocessed image batches (b, 3, S, S) float32 in the order of `paths`."""
    for batch in read_batches(paths, image_size, mean, std, batch_size):
        yield torch.from_numpy(batch)


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 (hex) of a module's state: every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _cache_key(paths: Sequence[str | Path], extractor: FeatureExtractor, image_size: int, mean: Sequence[float],
               std: Sequence[float], dtype: str) -> str:
    """Everything the cached features depend on: the images (path, size, mtime), the backbone's name and
    weights, and the preprocessing (size, mean/std, cache dtype)."""
    h = hashlib.sha256()
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    prep = [float(v) for v in (*mean, *std)]
    h.update(f"{extractor.name}|{weights_digest(extractor)}|{image_size}|{prep!r}|{dtype}".encode())
    return h.hexdigest()[:16]


def build_feature_cache(extractor: FeatureExtractor, paths: Sequence[str | Path], image_size: int,
                        mean: Sequence[float], std: Sequence[float], dtype: str = "float32",
                        cache_dir: str | Path | None = None, batch_size: int = 8,
                        progress: bool = True) -> torch.Tensor:
    """Features of every image, (N, C, S/4, S/4) in `dtype`.

    With `cache_dir`, features live in a .npy memmap there (float32/float16 only) and a later call with
    the same images (path, size, mtime), backbone weights, preprocessing and dtype reuses it instead of
    recomputing (see `_cache_key`).
    """
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"cache dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}")
    n, side = len(paths), image_size // 4
    shape = (n, extractor.channels, side, side)
    store: np.ndarray | torch.Tensor
    if cache_dir is not None:
        if dtype == "bfloat16":
            raise ValueError("a disk cache holds float32 or float16 (numpy has no bfloat16)")
        key = _cache_key(paths, extractor, image_size, mean, std, dtype)
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        file, meta = cache_dir / f"features-{key}.npy", cache_dir / f"features-{key}.json"
        if file.is_file() and meta.is_file() and json.loads(meta.read_text()).get("complete"):
            return torch.from_numpy(np.load(file, mmap_mode="r+"))
        store = np.lib.format.open_memmap(file, mode="w+", dtype=np.dtype(dtype), shape=shape)
    else:
        store = torch.empty(shape, dtype=CACHE_DTYPES[dtype])
    done = 0
    bar = tqdm(total=n, desc="caching features", unit="img", disable=not progress)
    for batch in load_batches(paths, image_size, mean, std, batch_size):
        feats = extractor(batch)
        if isinstance(store, np.ndarray):
            store[done:done + len(batch)] = feats.numpy().astype(store.dtype)
        else:
            store[done:done + len(batch)] = feats.to(store.dtype)
        done += len(batch)
        bar.update(len(batch))
    bar.close()
    if isinstance(store, np.ndarray):
        store.flush()
        meta.write_text(json.dumps({"complete": True, "paths": [str(p) for p in paths], "shape": list(shape)}))
        return torch.from_numpy(store)
    return store
