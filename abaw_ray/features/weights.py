"""Offline weight resolution: a local folder per extractor, else the Hugging Face cache.

Nothing here downloads. A missing weight raises :class:`WeightsNotFoundError` with what to
download and where to put it; nothing falls back to random weights.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")
WEIGHTS_ENV = "ABAW_RAY_WEIGHTS"
TINY_SEED = 0


class WeightsNotFoundError(FileNotFoundError):
    pass


def weights_dirs(weights_dir: Path | None) -> list[Path]:
    dirs = [weights_dir] if weights_dir else []
    if os.environ.get(WEIGHTS_ENV):
        dirs.append(Path(os.environ[WEIGHTS_ENV]).expanduser())
    return dirs


def local_dir(name: str, weights_dir: Path | None) -> Path | None:
    for d in weights_dirs(weights_dir):
        if (d / name).is_dir():
            return d / name
    return None


def missing_message(name: str, repo: str, weights_dir: Path | None, looked: list[str]) -> str:
    where = weights_dir or f"${WEIGHTS_ENV}"
    return (
        f"{name}: no local weights for {repo} (looked in: {'; '.join(looked)}). "
        f"This machine works offline: on one with internet run `hf download {repo}` and copy "
        f"the Hugging Face cache (~/.cache/huggingface) here, or save the model folder as "
        f"{where}/{name}/. For random test weights ask for the tiny variant (--tiny)."
    )


def locate_transformers(name: str, repo: str, weights_dir: Path | None) -> str:
    """Where a transformers model's weights are, without loading them: ``local:<dir>`` or
    ``hf:<repo>``; raises :class:`WeightsNotFoundError` when neither holds them."""
    from huggingface_hub import try_to_load_from_cache

    folder = local_dir(name, weights_dir)
    if folder is not None:
        return f"local:{folder}"
    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return f"hf:{repo}"
    looked = [str(d / name) for d in weights_dirs(weights_dir)]
    looked.append(f"Hugging Face cache for {repo}")
    raise WeightsNotFoundError(missing_message(name, repo, weights_dir, looked))


def load_transformers(
    name: str, repo: str, weights_dir: Path | None, loader: Callable[..., T]
) -> tuple[T, str]:
    """``loader(path_or_repo, local_files_only=True)`` from the local folder, else the cache."""
    where = locate_transformers(name, repo, weights_dir)
    target = where.split(":", 1)[1]
    try:
        return loader(target, local_files_only=True), where
    except OSError as err:
        message = missing_message(name, repo, weights_dir, [target])
        raise WeightsNotFoundError(f"{message} ({err})") from err


@contextlib.contextmanager
def tiny_init() -> Iterator[None]:
    """Seeded random init, so every actor and every run builds the same tiny model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        yield


TINY_WEIGHTS = f"tiny-random(seed={TINY_SEED})"
