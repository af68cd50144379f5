"""The one place that reaches into Zarr's internals: overlapped reads and writes of many small arrays.

A cache has many small arrays (the video table alone has twelve). Zarr's synchronous API reads or writes them one at
a time, each waiting for its own metadata and chunk I/O; its asynchronous API overlaps them, so a table costs about
one round trip (a few milliseconds locally, far more on an object store). That API must run on Zarr's own event loop,
where its stores and codecs live, and only `zarr.core.sync.sync` (not public) runs a coroutine there. It is kept
here, behind these functions and their test, so a Zarr upgrade that moves it breaks this file alone. Groups are
reopened through the public `zarr.api.asynchronous.open_group`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous as zarr_async
from zarr.core.sync import sync

__all__ = ["read_arrays", "together", "with_async_group", "write_arrays"]


def together(*steps: Awaitable[Any]) -> list[Any]:
    """Await Zarr coroutines side by side on Zarr's event loop; their results in order."""

    async def gather() -> list[Any]:
        return list(await asyncio.gather(*steps))

    return sync(gather())


def with_async_group(group: zarr.Group, use: Callable[[zarr.AsyncGroup], Awaitable[Any]]) -> Any:
    """Run `use(async twin of group)` on Zarr's loop: the same node reopened through the public async API."""

    async def main() -> Any:
        mode = "r" if group.read_only else "r+"
        twin = await zarr_async.open_group(store=group.store, path=group.path, mode=mode)
        return await use(twin)

    return sync(main())


def read_arrays(group: zarr.Group, names: list[str]) -> list[np.ndarray]:
    """Whole arrays under `group`, read side by side."""

    async def read(twin: zarr.AsyncGroup) -> list[np.ndarray]:
        async def one(name: str) -> np.ndarray:
            return await (await twin.getitem(name)).getitem(slice(None))

        return list(await asyncio.gather(*(one(name) for name in names)))

    return with_async_group(group, read)


def write_arrays(group: zarr.Group, writes: list[tuple[str, Any, np.ndarray]]) -> None:
    """(array name, selection, values) writes under `group`, side by side. Every chunk is stored, also one that holds
    only the fill value: Zarr's test for that compares each chunk whole and costs more than compressing a mask."""

    async def write(twin: zarr.AsyncGroup) -> None:
        async def one(name: str, selection: Any, values: np.ndarray) -> None:
            array = await twin.getitem(name)
            await array.with_config({"write_empty_chunks": True}).setitem(selection, values)

        await asyncio.gather(*(one(*w) for w in writes))

    with_async_group(group, write)
