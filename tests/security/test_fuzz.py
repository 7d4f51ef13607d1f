"""Hostile input against every rpc: requests generated from the proto descriptors
(strings huge, unicode, control characters, SQL-ish; integers at their bounds; enums out
of range; long repeated fields; nested messages) by every legitimate role. The answer is
a clear refusal or a success, never INTERNAL/UNKNOWN, and a refused call writes nothing."""
from __future__ import annotations

import collections

import grpc
import pytest
from google.protobuf import descriptor as d
from hypothesis import HealthCheck, given, settings, strategies as st

from services.common.auth import Role
from tests.security.conftest import SCHEMAS
from tests.security.rpc import all_methods, invoke, method_ids, request_class

EXAMPLES = 25
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.OUT_OF_RANGE,
            # The server's 4 MiB request limit refusing an oversized request before any handler.
            grpc.StatusCode.RESOURCE_EXHAUSTED}
NASTY = ["", " ", "a" * 5000, "\x00", "\x1b[31m", "\u202e\u200b", "中文名称", "😀" * 50, "' OR 1=1 --",
         "'; DROP TABLE referrals; --", "%s%n", "../../etc/passwd", "referrals/", "referrals/../x",
         "bookings/" + "0" * 32, "notifications/not-a-uuid", "consortiums/", "consortiums/X/institutions/",
         "consortiums/X/diseaseCatalogues/-1", "9" * 40, "-1", "NaN", "1e309", "13800138000",
         "11010519491231002X", "I63", "latest", "08:00", "25:61", "2024-02-30"]
INT32 = [0, 1, -1, 2**31 - 1, -2**31, 24, 721, 3651, 366]
INT64 = [0, -1, 2**63 - 1, -2**63, 253402300800, -62135596801]
_SCALARS = {
    d.FieldDescriptor.TYPE_INT32: st.sampled_from(INT32) | st.integers(-2**31, 2**31 - 1),
    d.FieldDescriptor.TYPE_SINT32: st.sampled_from(INT32),
    d.FieldDescriptor.TYPE_INT64: st.sampled_from(INT64) | st.integers(-2**63, 2**63 - 1),
    d.FieldDescriptor.TYPE_SINT64: st.sampled_from(INT64),
    d.FieldDescriptor.TYPE_UINT32: st.sampled_from([0, 1, 2**32 - 1]),
    d.FieldDescriptor.TYPE_UINT64: st.sampled_from([0, 1, 2**64 - 1]),
    d.FieldDescriptor.TYPE_BOOL: st.booleans(),
    d.FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    d.FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True, allow_infinity=True),
    d.FieldDescriptor.TYPE_BYTES: st.binary(max_size=32),
    d.FieldDescriptor.TYPE_ENUM: st.sampled_from([0, 1, 2, 3, -1, 99, 2**31 - 1, -2**31]) | st.integers(-3, 12),
}


def _value(field: d.FieldDescriptor, context: list[str], depth: int) -> st.SearchStrategy:
    if field.type == field.TYPE_STRING:
        return st.sampled_from(NASTY + context) | st.text(max_size=30)
    if field.type == field.TYPE_MESSAGE:
        return message(field.message_type, context, depth + 1)
    return _SCALARS[field.type]


@st.composite
def _message(draw, desc: d.Descriptor, context: list[str], depth: int):
    msg = request_class_of(desc)()
    for field in desc.fields:
        if field.type == field.TYPE_MESSAGE and (field.message_type.GetOptions().map_entry or depth >= 3):
            continue
        if not draw(st.booleans()):
            continue  # unset: the zero value is a boundary too
        value = _value(field, context, depth)
        if field.is_repeated:
            # Long lists at the top level only: nested ones multiply past any size limit.
            items = draw(st.lists(value, max_size=3) | value.map(lambda v: [v] * (300 if depth == 0 else 3)))
            if field.type == field.TYPE_MESSAGE:
                for item in items:
                    getattr(msg, field.name).add().CopyFrom(item)
            else:
                getattr(msg, field.name).extend(items)
        elif field.type == field.TYPE_MESSAGE:
            getattr(msg, field.name).CopyFrom(draw(value))
        else:
            setattr(msg, field.name, draw(value))
    return msg


def message(desc: d.Descriptor, context: list[str], depth: int = 0) -> st.SearchStrategy:
    return _message(desc, context, depth)


def request_class_of(desc: d.Descriptor):
    from google.protobuf import message_factory
    return message_factory.GetMessageClass(desc)


async def _row_counts(pool, schema: str) -> dict[str, int]:
    tables = [r["tablename"] for r in await pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 AND tablename <> 'inbox' ORDER BY 1", schema)]
    sql = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM {schema}.{t}" for t in tables)
    return {r["t"]: r["n"] for r in await pool.fetch(sql)}


SEEN: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.mark.parametrize("index", range(len(all_methods())), ids=method_ids())
async def test_hostile_requests_get_clear_refusals_and_change_nothing(services, flow, index):
    svc, method = all_methods()[index]
    w, r = flow.world, flow.referrals[0]
    context = [r.name, r.name.rpartition("/")[2], r.patient.patient_id, f"bookings/{r.booking_id}", r.booking_id,
               w.hospital, w.clinics[0], w.consortium, f"consortiums/{w.consortium}",
               f"consortiums/{w.consortium}/institutions/{w.hospital}", *flow.notifications[:1]]
    callers = [services.stack.metadata(w.clinics[0], Role.CLINIC_DOCTOR),
               services.stack.metadata(w.hospital, Role.REFERRAL_DESK),
               services.stack.metadata(w.hospital, Role.BED_MANAGER),
               services.stack.metadata(w.consortium, Role.CONSORTIUM_OFFICE),
               services.stack.metadata("scheduler", Role.SERVICE)]
    bad: list = []
    seen = SEEN[f"{svc}.{method.name}"]

    # Hypothesis generates (its engine is synchronous); the calls run on the test's loop.
    examples: list = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(request=message(method.input_type, context), caller=st.sampled_from(callers))
    def generate(request, caller):
        examples.append((request, caller))

    generate()
    for request, caller in examples:
        before = await _row_counts(services.db, svc)
        outcome = await invoke(services, svc, method, request, caller, stream_seconds=0.3)
        seen[outcome.code.name] += 1
        if outcome.ok:
            continue
        if outcome.code not in REFUSALS:
            bad.append((outcome.code.name, outcome.details, str(request)[:300]))
            continue
        after = await _row_counts(services.db, svc)
        changed = {t: (before[t], after.get(t)) for t in before if before[t] != after.get(t)}
        if changed:
            bad.append(("WROTE", outcome.code.name, changed, str(request)[:300]))
    print(f"\nfuzz {svc}.{method.name}: {sum(seen.values())} examples, codes {dict(seen)}")
    assert not bad, "\n".join(map(str, bad[:5]))
