"""Class probabilities for image files, decoded and resized exactly as the model's training data was."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .data.errors import DataError
from .data.images import ImageSet
from .data.official import IMAGE_SUFFIXES, decode_image
from .model import FGSSLNet
from .train import predict


@dataclass
class Prediction:
    path: Path
    probabilities: np.ndarray | None  # None: the file could not be decoded
    error: str = ""


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files given, and the image files under the folders given (sorted, hidden files left out). A path that
    does not exist raises DataError naming it."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return out


def predict_files(model: FGSSLNet, card: dict[str, Any], files: list[Path], batch_size: int = 64, *,
                  strict: bool = False) -> list[Prediction]:
    """One Prediction per file, in order; undecodable files get an error instead of probabilities (with `strict`,
    the first one raises DataError naming it)."""
    size, resize = int(card["preprocessing"]["image_size"]), str(card["preprocessing"]["resize"])
    names = tuple(card["class_names"])
    out: list[Prediction] = []
    batch: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        images = ImageSet(torch.from_numpy(np.stack([a for _, a in batch])),
                          torch.zeros(len(batch), dtype=torch.long), names)
        probs = torch.softmax(torch.from_numpy(predict(model, images)[1]), dim=1).numpy()
        for (i, _), p in zip(batch, probs):
            out[i].probabilities = p
        batch.clear()

    for f in files:
        out.append(Prediction(f, None))
        try:
            batch.append((len(out) - 1, decode_image(f, size, resize)))
        except DataError as e:
            if strict:
                raise
            out[-1].error = str(e)
        if len(batch) >= batch_size:
            flush()
    flush()
    return out
