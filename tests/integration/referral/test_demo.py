"""The demo consortium loads through the API, twice without harm."""
from referral.v1 import referral_service_pb2 as api
from services.referral import demo


async def test_demo_loads_idempotently(stack, stub, referral_app):
    def token_for(institution, role):
        return stack.token(institution, role)

    address = f"127.0.0.1:{referral_app.port}"
    await demo.load_demo(address, token_for)
    await demo.load_demo(address, token_for)
    md = stack.metadata("CLINIC03", "clinic_doctor")
    catalogue = await stub.GetDiseaseCatalogue(api.GetDiseaseCatalogueRequest(
        name="consortiums/DEMO/diseaseCatalogues/latest"), metadata=md)
    assert catalogue.version == 1 and len(catalogue.entries) == 92
    members = await stub.ListInstitutions(api.ListInstitutionsRequest(parent="consortiums/DEMO"), metadata=md)
    assert len(members.institutions) == 1 + 12 + len(demo.VILLAGES)
    distances = [i.distance_km for i in members.institutions if i.level == 2]
    assert min(distances) == 20 and max(distances) == 170
    rules = await stub.CheckReferralRules(api.CheckReferralRulesRequest(
        diagnosis_code="E11.9", direction=1, receiving_institution_id=demo.HOSPITAL), metadata=md)
    assert rules.justification_required and rules.catalogue_disease_name == "2型糖尿病"
