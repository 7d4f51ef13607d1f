"""One referral service for the package, and a fresh consortium per test."""
from __future__ import annotations

import os
import uuid

import grpc
import pytest

from referral.v1 import referral_service_pb2_grpc as api_grpc
from services.referral.entrypoints.app import build
from tests.integration.referral.world import World, new_world
from tests.support.stack import running_service


@pytest.fixture(scope="session")
async def referral_app(stack):
    os.environ.setdefault("REFERRAL_WATCH_POLL_SECONDS", "0.5")
    os.environ.setdefault("REFERRAL_SLA_CHECK_SECONDS", "3600")
    async with running_service(stack, "referral", build, outbox_poll_seconds=0.2) as app:
        yield app


@pytest.fixture(scope="session")
async def stub(referral_app):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{referral_app.port}") as channel:
        yield api_grpc.ReferralServiceStub(channel)


@pytest.fixture
async def world(stack, stub) -> World:
    return await new_world(stack, stub, uuid.uuid4().hex[:6].upper())
