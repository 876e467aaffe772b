"""Progress on every long step (training, labelling, preparing, evaluating): a bar on a terminal, nothing where
output is captured (CI, `dvc repro`'s log, a Prefect worker), as tqdm's `disable=None` decides."""

from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm.auto import tqdm

Item = TypeVar("Item")


def progress(items: Iterable[Item] | None = None, description: str = "", total: int | None = None,
             unit: str = "it", shown: bool = True) -> tqdm:
    """A bar over `items` (or one to `update` by hand up to `total`) that goes once its step is done; `shown`
    False hides it whatever the terminal (a rank other than 0 under torchrun)."""
    return tqdm(items, desc=description, total=total, unit=unit, leave=False, dynamic_ncols=True,
                disable=None if shown else True)
