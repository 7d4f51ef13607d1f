"""An exam channel is one device in one room: channels of a hospital may share a device
(plain CT in the morning, contrast CT in the afternoon) only at different times, or the
scheduler would book two patients on one scanner at once."""
import asyncio

import grpc
import pytest

from scheduling.v1 import events_pb2, scheduling_service_pb2 as pb
from services.common.auth import Role
from services.scheduling.domain import calendar
from tests.support.rpc_errors import field_violations

from .conftest import pdate, timedelta, today

CT64, CT16 = "CT-64排", "CT-16排"


def _channel(hospital: str, name: str, device: str) -> pb.ExamChannel:
    return pb.ExamChannel(channel_id=f"{hospital}-{name}", modality="CT", device_id=device, slot_minutes=30,
                          place=events_pb2.Place(building="医技楼", floor="1层", room="CT室1"))


def _window(channel: pb.ExamChannel, day, start: str, end: str) -> pb.ExamDayCapacity:
    return pb.ExamDayCapacity(channel_id=channel.channel_id, date=pdate(day), start_time=start, end_time=end,
                              reserved_places=1)


def _taken(device: str, day, start: str, end: str, channel: pb.ExamChannel) -> str:
    return f"设备{device}在{calendar.zh_date(day)}{start}–{end}已属于通道{channel.channel_id}"


@pytest.fixture
def publish(stack, stub, hospital):
    """PublishExamCapacity as a hospital's referral desk (this test's hospital unless named)."""
    def call(channels=(), capacity=(), hospital_id=hospital):
        return stub.PublishExamCapacity(pb.PublishExamCapacityRequest(
            hospital_id=hospital_id, channels=list(channels), capacity=list(capacity)),
            metadata=stack.metadata(hospital_id, Role.REFERRAL_DESK))
    return call


@pytest.fixture
def day():
    return today() + timedelta(days=2)


@pytest.fixture
def plain(hospital) -> pb.ExamChannel:
    return _channel(hospital, "CT1", CT64)


@pytest.fixture
def contrast(hospital) -> pb.ExamChannel:
    """A second channel on plain's device, as contrast CT on the plain CT's scanner."""
    return _channel(hospital, "CT2", CT64)


async def _refused(call) -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return field_violations(err.value)


async def _slots(app, hospital: str) -> list[tuple]:
    async with app.ctx.pool.acquire() as conn:
        return [tuple(r) for r in await conn.fetch(
            "SELECT channel_id, start_at FROM slots WHERE hospital_id = $1 ORDER BY 1, 2", hospital)]


async def test_one_request_may_not_put_a_device_in_two_channels_at_once(app, publish, hospital, day, plain, contrast):
    assert await _refused(publish([plain, contrast], [_window(plain, day, "08:00", "12:00"),
                                                      _window(contrast, day, "11:00", "14:00")])) == [
        ("capacity[1].start_time", _taken(CT64, day, "08:00", "12:00", plain))]
    async with app.ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM exam_channels WHERE hospital_id = $1", hospital) == 0
    assert await _slots(app, hospital) == []


async def test_a_device_taken_by_an_earlier_publish_is_refused(app, publish, hospital, day, plain, contrast):
    await publish([plain], [_window(plain, day, "08:00", "12:00")])
    before = await _slots(app, hospital)
    # A window inside the other channel's, with the channel in the request ...
    assert await _refused(publish([contrast], [_window(contrast, day, "09:00", "10:00")])) == [
        ("capacity[0].start_time", _taken(CT64, day, "08:00", "12:00", plain))]
    assert await _slots(app, hospital) == before
    # ... or for a channel published earlier on another day, by its capacity alone.
    await publish([contrast], [_window(contrast, day + timedelta(days=1), "08:00", "12:00")])
    before = await _slots(app, hospital)
    assert await _refused(publish(capacity=[_window(contrast, day, "11:30", "12:30")])) == [
        ("capacity[0].start_time", _taken(CT64, day, "08:00", "12:00", plain))]
    assert await _slots(app, hospital) == before


async def test_a_channel_moved_onto_a_busy_device_is_refused(app, publish, hospital, day, plain):
    other = _channel(hospital, "CT2", CT16)
    await publish([plain, other], [_window(plain, day, "08:00", "12:00"), _window(other, day, "10:00", "16:00")])
    other.device_id = CT64
    assert await _refused(publish([other])) == [("channels[0].device_id", _taken(CT64, day, "08:00", "12:00", plain))]
    async with app.ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT device_id FROM exam_channels WHERE channel_id = $1",
                                   other.channel_id) == CT16
    # Moved together with its window to the afternoon, it fits.
    await publish([other], [_window(other, day, "12:00", "16:00")])


async def test_one_device_serves_two_channels_at_different_times(publish, day, plain, contrast):
    out = await publish([plain, contrast], [_window(plain, day, "08:00", "12:00"),
                                            _window(contrast, day, "12:00", "17:00")])
    assert out.channels == 2 and out.slots == 2
    # The same hours on another day, in a request of its own.
    await publish(capacity=[_window(contrast, day + timedelta(days=1), "08:00", "12:00")])
    # One slot over the boundary is one too many.
    assert await _refused(publish(capacity=[_window(contrast, day, "11:30", "17:00")])) == [
        ("capacity[0].start_time", _taken(CT64, day, "08:00", "12:00", plain))]


async def test_different_devices_at_the_same_time_are_accepted(publish, hospital, day, plain, contrast):
    both = [_window(plain, day, "08:00", "12:00"), _window(contrast, day, "08:00", "12:00")]
    assert await _refused(publish([plain, contrast], both)) == [
        ("capacity[1].start_time", _taken(CT64, day, "08:00", "12:00", plain))]
    contrast.device_id = CT16
    assert (await publish([plain, contrast], both)).slots == 2
    # Channels that name no device, and another hospital's device of the same name, are no clash.
    idle = [_channel(hospital, f"US{n}", "") for n in (1, 2)]
    await publish(idle, [_window(c, day, "08:00", "12:00") for c in idle])
    elsewhere = _channel(f"{hospital}B", "CT1", CT64)
    await publish([elsewhere], [_window(elsewhere, day, "08:00", "12:00")], hospital_id=f"{hospital}B")


async def test_republishing_a_channel_replaces_its_own_windows(app, publish, hospital, day, plain, contrast):
    windows = [_window(plain, day, "08:00", "12:00"), _window(contrast, day, "13:00", "17:00")]
    first = await publish([plain, contrast], windows)
    assert await publish([plain, contrast], windows) == first
    # Its own earlier window is no clash: the new one replaces it.
    await publish(capacity=[_window(plain, day, "09:00", "13:00")])
    assert [s for c, s in await _slots(app, hospital) if c == plain.channel_id] == [calendar.at(day, 9 * 60)]
    # The other channel's window still is.
    assert await _refused(publish(capacity=[_window(plain, day, "09:00", "13:30")])) == [
        ("capacity[0].start_time", _taken(CT64, day, "13:00", "17:00", contrast))]
    # Only the replaced window holds the device: the morning before 09:00 is free again.
    await publish(capacity=[_window(contrast, day, "08:00", "09:00")])


async def test_concurrent_publishes_cannot_both_take_a_device(app, publish, hospital, day, plain, contrast):
    results = await asyncio.gather(publish([plain], [_window(plain, day, "08:00", "12:00")]),
                                   publish([contrast], [_window(contrast, day, "10:00", "14:00")]),
                                   return_exceptions=True)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refused) == 1 and refused[0].code() == grpc.StatusCode.INVALID_ARGUMENT, results
    assert len({c for c, _ in await _slots(app, hospital)}) == 1
