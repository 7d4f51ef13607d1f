"""The demo data loads through the API, twice without change."""
from scheduling.v1 import scheduling_service_pb2 as pb
from services.common.auth import Role
from services.scheduling import demo


async def test_demo_loads_idempotently(stack, app, stub):
    address = f"127.0.0.1:{app.port}"
    await demo.load_demo(address, stack.token)
    await demo.load_demo(address, stack.token)
    listed = await stub.ListAvailability(pb.ListAvailabilityRequest(hospital_id=demo.HOSPITAL),
                                         metadata=stack.metadata("CLINIC03", Role.CLINIC_DOCTOR))
    kinds = {s.resource_type for s in listed.slots}
    assert kinds == {pb.RESOURCE_TYPE_OUTPATIENT, pb.RESOURCE_TYPE_EXAM} and listed.beds
    assert {s.modality for s in listed.slots} >= {"CT", "MRI", "US", "ENDOSCOPY"}
    board = await stub.GetBedBoard(pb.GetBedBoardRequest(hospital_id=demo.HOSPITAL),
                                   metadata=stack.metadata(demo.HOSPITAL, Role.BED_MANAGER))
    assert len(board.beds) == 3 * 10
