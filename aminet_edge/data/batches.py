"""Image files -> preprocessed model-input batches (torch), decoded in DataLoader worker processes.

Used by the feature cache, calibration and evaluation; the torch-free runtime has its own loader.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import numpy as np
from torch.utils.data import DataLoader, Dataset

from aminet_edge.config import TileConfig
from aminet_edge.data.images import ImageReadError, image_size_of, preprocess, read_image


class PreprocessedImages(Dataset):
    """Item i: the model input of paths[i], (3, S, S) float32 (`read_image` then `preprocess`), or the
    ImageReadError it raised, returned rather than raised so a worker process hands back one clear line.
    With `tile`, item i is the inputs of paths[i]'s tiles, (T, 3, S, S) (aminet_edge.tiling order)."""

    def __init__(self, paths: Sequence[str | Path], image_size: int, mean: Sequence[float],
                 std: Sequence[float], tile: TileConfig | None = None) -> None:
        self.paths, self.image_size, self.mean, self.std, self.tile = list(paths), image_size, mean, std, tile

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor | ImageReadError:
        from aminet_edge.tiling import crop, grid

        try:
            image = read_image(self.paths[i])
        except ImageReadError as exc:
            return exc
        if self.tile is None:
            return torch.from_numpy(preprocess(image, self.image_size, self.mean, self.std))
        return torch.from_numpy(np.stack([preprocess(crop(image, box), self.image_size, self.mean, self.std)
                                          for box in grid(image.shape[0], image.shape[1], self.tile)]))


def tile_count(paths: Sequence[str | Path], tile: TileConfig | None) -> int:
    """How many model inputs `load_batches` yields for `paths`: one per image, or per tile (headers only)."""
    from aminet_edge.tiling import grid

    if tile is None:
        return len(paths)
    return sum(len(grid(*image_size_of(p), tile)) for p in paths)


def _stack(items: list[torch.Tensor | ImageReadError]) -> torch.Tensor | ImageReadError:
    err = next((x for x in items if isinstance(x, ImageReadError)), None)
    return err if err is not None else torch.stack(items)  # type: ignore[arg-type]


def load_batches(paths: Sequence[str | Path], image_size: int, mean: Sequence[float], std: Sequence[float],
                 batch_size: int, workers: int = 0, pin_memory: bool = False,
                 tile: TileConfig | None = None) -> Iterator[torch.Tensor]:
    """Yield preprocessed image batches (b, 3, S, S) float32 in the order of `paths`.

    workers: decode and resize in that many DataLoader processes (0: in this one); the batches are the
    same either way. pin_memory: page-locked batches, for non_blocking copies to a GPU. tile: the inputs
    are the images' tiles instead (aminet_edge.tiling), image after image, batch_size tiles a batch.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    dataset = PreprocessedImages(paths, image_size, mean, std, tile)
    if tile is None:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_stack,
                            pin_memory=pin_memory)
        for batch in loader:
            if isinstance(batch, ImageReadError):
                raise batch
            yield batch
        return
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=_stack, pin_memory=pin_memory)
    pending: list[torch.Tensor] = []
    for batch in loader:
        if isinstance(batch, ImageReadError):
            raise batch
        pending.extend(batch[0])
        while len(pending) >= batch_size:
            yield torch.stack(pending[:batch_size])
            pending = pending[batch_size:]
    if pending:
        yield torch.stack(pending)
