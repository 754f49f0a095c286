"""The key a fused pod preloads (job_runner.sns.Preload): a failed load is a None the
stages answer by loading their own key, never a stage failure; cancel stops a load."""

from __future__ import annotations

import asyncio
import logging

from job_runner.sns import Preload


def preload_of(coroutine) -> Preload:
    return Preload(asyncio.ensure_future(coroutine), for_compute=True)


async def test_a_loaded_key_is_handed_to_every_stage_that_asks():
    key = object()

    async def load():
        return key

    preload = preload_of(load())
    assert await preload.evaluator() is key
    assert await preload.evaluator() is key  # compute, then SNS: the same key


async def test_a_failed_load_is_none_and_logged(caplog):
    async def load():
        raise OSError("node cache unreadable")

    preload = preload_of(load())
    with caplog.at_level(logging.WARNING):
        assert await preload.evaluator() is None
        assert await preload.evaluator() is None
    assert [r.fields["error"] for r in caplog.records] == ["node cache unreadable"] * 2


async def test_cancel_stops_a_load_still_running():
    started = asyncio.Event()

    async def load():
        started.set()
        await asyncio.sleep(3600)

    preload = preload_of(load())
    await started.wait()
    preload.cancel()
    await asyncio.gather(preload.key, return_exceptions=True)
    assert preload.key.cancelled()
