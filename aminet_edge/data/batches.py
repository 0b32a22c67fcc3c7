"""Image files -> preprocessed model-input batches (torch), decoded in DataLoader worker processes.

Used by the feature cache, calibration and evaluation; the torch-free runtime has its own loader.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from aminet_edge.data.images import ImageReadError, preprocess, read_image


class PreprocessedImages(Dataset):
    """Item i: the model input of paths[i], (3, S, S) float32 (`read_image` then `preprocess`), or the
    ImageReadError it raised, returned rather than raised so a worker process hands back one clear line."""

    def __init__(self, paths: Sequence[str | Path], image_size: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        self.paths, self.image_size, self.mean, self.std = list(paths), image_size, mean, std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor | ImageReadError:
        try:
            return torch.from_numpy(preprocess(read_image(self.paths[i]), self.image_size, self.mean, self.std))
        except ImageReadError as exc:
            return exc


def _stack(items: list[torch.Tensor | ImageReadError]) -> torch.Tensor | ImageReadError:
    err = next((x for x in items if isinstance(x, ImageReadError)), None)
    return err if err is not None else torch.stack(items)  # type: ignore[arg-type]


def load_batches(paths: Sequence[str | Path], image_size: int, mean: Sequence[float], std: Sequence[float],
                 batch_size: int, workers: int = 0, pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """Yield preprocessed image batches (b, 3, S, S) float32 in the order of `paths`.

    workers: decode and resize in that many DataLoader processes (0: in this one); the batches are the
    same either way. pin_memory: page-locked batches, for non_blocking copies to a GPU.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    loader = DataLoader(PreprocessedImages(paths, image_size, mean, std), batch_size=batch_size,
                        num_workers=workers, collate_fn=_stack, pin_memory=pin_memory)
    for batch in loader:
        if isinstance(batch, ImageReadError):
            raise batch
        yield batch
