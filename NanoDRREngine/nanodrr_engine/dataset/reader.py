"""Reading for training: :class:`DRRDataset` (a store on disk) and :class:`DRRStream` (no disk).

Both return the same dict per sample: ``image`` ``[C, H, W]`` float32, ``rt_inv`` ``[4, 4]``, ``k_inv``
``[3, 3]``, ``sdd``, ``subject``, ``index`` and the sample's parameters (``primary``, ``secondary``,
``sod``, ``roll``, ``jitter`` ``[3]``, ``mu_bone``, ``blur``, ``pose_row``). On the CPU a stream yields
exactly the bytes ``generate`` stores for the same spec; on a GPU the same distribution.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from . import store
from .errors import DatasetError, IncompleteDatasetError
from .renderer import Renderer
from .sampling import PARAMS
from .sources import as_inputs, load
from .spec import DatasetSpec

_META = ("rt_inv", "k_inv", "sdd", "subject", *(f"params/{p}" for p in PARAMS))


class DRRDataset(torch.utils.data.Dataset):
    """A dataset store as a map-style ``Dataset`` (safe in DataLoader worker processes: each opens the
    store itself). Only finished datasets are read unless ``allow_incomplete`` (then: done chunks only)."""

    def __init__(self, path, allow_incomplete: bool = False) -> None:
        self.path = str(path)
        group = store.open_store(self.path, "r")
        self.record = store.record_of(group)
        self.spec = DatasetSpec.from_dict(self.record["spec"])
        done = store.done_chunks(group)
        if not done.all() and not allow_incomplete:
            raise IncompleteDatasetError(
                f"path: {self.path} has {int(done.sum())} of {len(done)} chunks done; re-run its generate command "
                "to finish it, or pass allow_incomplete=True to read the done chunks only"
            )
        self._indices = np.concatenate(
            [
                np.arange(self.spec.chunk_range(c).start, self.spec.chunk_range(c).stop)
                for c in np.flatnonzero(done)
            ]
            or [np.zeros(0, dtype=np.int64)]
        )
        self._group, self._pid = group, os.getpid()
        self._cached: tuple[int, dict] | None = None

    @property
    def cts(self) -> list[dict]:
        """The CTs (path or name, SHA-256) in ``subject`` order."""
        return list(self.record["cts"])

    def __len__(self) -> int:
        return len(self._indices)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_group"] = None  # reopened in the worker
        state["_cached"] = None
        return state

    def _chunk_meta(self, c: int) -> dict:
        if self._cached is None or self._cached[0] != c:
            r = self.spec.chunk_range(c)
            self._cached = (c, {k: np.asarray(self._group[k][r.start : r.stop]) for k in _META})
        return self._cached[1]

    def __getitem__(self, k: int) -> dict:
        if not -len(self) <= k < len(self):
            raise IndexError(f"index {k} out of range for {len(self)} samples")
        if self._group is None or self._pid != os.getpid():  # a pickled copy, or a forked DataLoader worker
            self._group, self._pid, self._cached = store.open_store(self.path, "r"), os.getpid(), None
        i = int(self._indices[k])
        c = i // self.spec.chunk
        meta = self._chunk_meta(c)
        j = i - c * self.spec.chunk
        image = np.asarray(self._group["images"][i])
        return _sample(i, torch.from_numpy(image.astype(np.float32)), {key: meta[key][j] for key in _META})


def _sample(i: int, image: torch.Tensor, meta: dict) -> dict:
    out = {"image": image, "index": i}
    for key, value in meta.items():
        out[key.removeprefix("params/")] = torch.as_tensor(np.asarray(value))
    return out


class DRRStream(torch.utils.data.IterableDataset):
    """Samples ``start … stop − 1`` of ``spec`` rendered on the fly on ``device``, ``batch_size`` at a time.

    Yields batches (dicts of stacked tensors, ``image`` ``[B, C, H, W]`` on ``device``); use it in a
    ``DataLoader`` with ``batch_size=None``. With DataLoader workers each takes every K-th batch; give the
    loader ``multiprocessing_context="spawn"``: numba's OpenMP threads do not survive ``fork()`` once
    this process has rendered (GNU OpenMP then terminates the worker).
    """

    def __init__(
        self, ct, spec: DatasetSpec, batch_size: int | None = None, device="cpu", start: int = 0,
        stop: int | None = None, backend: str = "auto",
    ) -> None:  # fmt: skip
        super().__init__()
        if not isinstance(spec, DatasetSpec):
            raise DatasetError(f"spec: expected a DatasetSpec, got {type(spec).__name__}")
        self.spec = spec.checked()
        self.batch_size = self.spec.chunk if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise DatasetError(f"batch_size: must be >= 1, got {batch_size!r}")
        self.start = int(start)
        self.stop = self.spec.n if stop is None else int(stop)
        if not 0 <= self.start <= self.stop <= self.spec.n:
            raise DatasetError(
                f"start, stop: need 0 <= start <= stop <= n = {self.spec.n}, got {start}, {stop}"
            )
        self.device = torch.device(device)
        self.backend = backend
        self._loaded = [load(c) for c in as_inputs(ct)]
        self._renderer: Renderer | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_renderer"] = None
        return state

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __iter__(self):
        if self._renderer is None:
            self._renderer = Renderer(self.spec, self._loaded, self.device, self.backend)
        info = torch.utils.data.get_worker_info()
        first, every = (0, 1) if info is None else (info.id, info.num_workers)
        starts = range(self.start, self.stop, self.batch_size)
        for b in range(first, len(starts), every):
            indices = range(starts[b], min(self.stop, starts[b] + self.batch_size))
            yield self._batch(indices)

    def _batch(self, indices: range) -> dict:
        r = self._renderer
        if self.device.type == "cpu":
            arrays = r.render(indices)
            image = torch.from_numpy(arrays.pop("images").astype(np.float32))
        else:
            image, arrays = r.render_device(indices)
            image = image.float()
        out = {"image": image, "index": torch.as_tensor(np.asarray(indices), device=self.device)}
        for key, value in arrays.items():
            out[key.removeprefix("params/")] = torch.as_tensor(value, device=self.device)
        return out


__all__ = ["DRRDataset", "DRRStream"]
