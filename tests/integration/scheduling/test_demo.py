"""The demo data loads through the API, twice without change."""
from scheduling.v1 import scheduling_service_pb2 as pb
from services.common.auth import Role
from services.scheduling import demo
from tests.support.membership import publish_members, wait_members


async def test_demo_loads_idempotently(stack, app, stub):
    address = f"127.0.0.1:{app.port}"
    await demo.load_demo(address, stack.token)
    await demo.load_demo(address, stack.token)
    # Loaded by the hospital's own tokens before any membership is known; a clinic reads
    # availability once the referral service's membership events arrived.
    await publish_members(app.ctx.broker, "DEMO", demo.HOSPITAL, "CLINIC03")
    await wait_members(app.ctx.pool, demo.HOSPITAL, "CLINIC03")
    listed = await stub.ListAvailability(pb.ListAvailabilityRequest(hospital_id=demo.HOSPITAL),
                                         metadata=stack.metadata("CLINIC03", Role.CLINIC_DOCTOR))
    kinds = {s.resource_type for s in listed.slots}
    assert kinds == {pb.RESOURCE_TYPE_OUTPATIENT, pb.RESOURCE_TYPE_EXAM} and listed.beds
    assert {s.modality for s in listed.slots} >= {"CT", "MRI", "US", "ENDOSCOPY"}
    board = await stub.GetBedBoard(pb.GetBedBoardRequest(hospital_id=demo.HOSPITAL),
                                   metadata=stack.metadata(demo.HOSPITAL, Role.BED_MANAGER))
    assert len(board.beds) == 3 * 10
