"""services.common.app.run: the services' event loop, chosen by EVENT_LOOP."""
import asyncio
import concurrent.futures
import pytest
import uvloop

from services.common import app


async def _loop_type():
    return type(asyncio.get_running_loop())


def _run_in_thread(env: str | None, monkeypatch):
    # app.run starts its own loop, which a thread may do while pytest's loop runs here.
    if env is None:
        monkeypatch.delenv("EVENT_LOOP", raising=False)
    else:
        monkeypatch.setenv("EVENT_LOOP", env)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(app.run, _loop_type()).result()


def test_uvloop_is_the_default_and_asyncio_can_be_chosen(monkeypatch):
    assert _run_in_thread(None, monkeypatch) is uvloop.Loop
    assert issubclass(_run_in_thread("asyncio", monkeypatch), asyncio.BaseEventLoop)
    assert not issubclass(_run_in_thread("asyncio", monkeypatch), uvloop.Loop)


def test_an_unknown_event_loop_is_refused_before_anything_runs(monkeypatch):
    monkeypatch.setenv("EVENT_LOOP", "trio")
    main = _loop_type()
    with pytest.raises(SystemExit, match="EVENT_LOOP must be one of uvloop, asyncio"):
        app.run(main)
    main.close()
