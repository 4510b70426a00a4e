"""AccountsService over a real grpc.aio server on an OS-chosen port."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import timestamp_pb2

from services.common.errors import RemoteError
from services.common.grpc_server import GrpcServer
from services.router.accounting import RequestLogEntry
from services.router.accounting.service import SERVICE_NAME, AccountsServicer
from switchyard.inference.v1 import inference_pb2
from switchyard.router.v1 import accounts_service_pb2 as pb
from switchyard.router.v1 import accounts_service_pb2_grpc as pb_grpc

from .conftest import new_key


@pytest.fixture
async def stub(accounting):
    server = GrpcServer([SERVICE_NAME], "127.0.0.1:0")
    pb_grpc.add_AccountsServiceServicer_to_server(AccountsServicer(accounting), server.server)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.AccountsServiceStub(channel)
    await channel.close()
    await server.stop(None)


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


async def failure(call) -> RemoteError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return RemoteError.from_rpc_error(error.value)


@pytest.fixture
async def secrets(accounting):
    customer_id, customer = await new_key(accounting, name="customer", credits=3)
    _, admin = await new_key(accounting, name="admin", admin=True, reveal_model_names=True)
    for i in range(3):
        accounting.record(
            RequestLogEntry(
                request_id=f"req-{i}",
                key_id=customer_id,
                model="acme/large",
                provider="acme",
                customer_identifier="c1",
                prompt_tokens=10,
                completion_tokens=i,
                cost_nanocredits=1_000_000,
                request=inference_pb2.GenerationInput(prompt=inference_pb2.TextPrompt(text=f"prompt {i}")),
                completions=[f"completion {i}"],
            )
        )
    await accounting.flush_log()
    return {"customer": customer, "admin": admin, "customer_id": customer_id}


async def test_calls_without_a_valid_key_are_unauthenticated(stub):
    error = await failure(stub.GetUsage(pb.GetUsageRequest()))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_API_KEY")
    error = await failure(stub.GetUsage(pb.GetUsageRequest(), metadata=bearer("sy-wrong")))
    assert error.code == grpc.StatusCode.UNAUTHENTICATED


async def test_get_usage_returns_buckets_totals_and_balance(stub, secrets):
    response = await stub.GetUsage(pb.GetUsageRequest(), metadata=bearer(secrets["customer"]))
    assert [(b.day != "", b.model, b.customer_identifier, b.requests) for b in response.buckets] == [
        (True, "redacted", "c1", 3)
    ]
    assert response.total.completion_tokens == 3
    assert response.total.cost == pytest.approx(0.003)
    assert response.balance == pytest.approx(3.0)


async def test_get_usage_of_another_key_needs_admin(stub, secrets):
    error = await failure(
        stub.GetUsage(pb.GetUsageRequest(key_id="key_someone_else"), metadata=bearer(secrets["customer"]))
    )
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    response = await stub.GetUsage(
        pb.GetUsageRequest(key_id=secrets["customer_id"]), metadata=bearer(secrets["admin"])
    )
    assert response.buckets[0].model == "acme/large"


async def test_list_requests_pages_and_filters(stub, secrets):
    first = await stub.ListRequests(pb.ListRequestsRequest(page_size=2), metadata=bearer(secrets["customer"]))
    assert [r.request_id for r in first.requests] == ["req-2", "req-1"]
    assert first.next_page_token
    second = await stub.ListRequests(
        pb.ListRequestsRequest(page_size=2, page_token=first.next_page_token),
        metadata=bearer(secrets["customer"]),
    )
    assert [r.request_id for r in second.requests] == ["req-0"]
    assert second.next_page_token == ""

    future = timestamp_pb2.Timestamp(seconds=4_000_000_000)
    none = await stub.ListRequests(
        pb.ListRequestsRequest(start_time=future), metadata=bearer(secrets["customer"])
    )
    assert list(none.requests) == []
    status = await stub.ListRequests(
        pb.ListRequestsRequest(status_code=500), metadata=bearer(secrets["customer"])
    )
    assert list(status.requests) == []


async def test_get_request_shows_the_logged_text_and_hides_other_keys_requests(stub, secrets, accounting):
    response = await stub.GetRequest(
        pb.GetRequestRequest(request_id="req-1"), metadata=bearer(secrets["customer"])
    )
    record = response.request
    assert record.model == "redacted" and record.provider == ""
    assert '"prompt 1"' in record.request_json
    assert list(record.completions) == ["completion 1"]
    assert record.cost == pytest.approx(0.001)

    _, stranger = await new_key(accounting, name="stranger")
    error = await failure(
        stub.GetRequest(pb.GetRequestRequest(request_id="req-1"), metadata=bearer(stranger))
    )
    assert error.code == grpc.StatusCode.NOT_FOUND


async def test_key_administration_is_for_admins(stub, secrets):
    error = await failure(stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=bearer(secrets["customer"])))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED

    admin = bearer(secrets["admin"])
    created = await stub.CreateApiKey(
        pb.CreateApiKeyRequest(
            name="new", credits=2.5, requests_per_minute=30, allowed_models=["acme/large"]
        ),
        metadata=admin,
    )
    assert created.secret.startswith(created.api_key.prefix)
    assert created.api_key.balance == pytest.approx(2.5)
    assert created.api_key.requests_per_minute == 30
    assert not created.api_key.HasField("tokens_per_minute")
    new_secret, new_id = created.secret, created.api_key.id

    # The new key works at once, for its own usage.
    await stub.GetUsage(pb.GetUsageRequest(), metadata=bearer(new_secret))

    topped = await stub.TopUpApiKey(pb.TopUpApiKeyRequest(key_id=new_id, credits=1.5), metadata=admin)
    assert topped.api_key.balance == pytest.approx(4.0)
    error = await failure(stub.TopUpApiKey(pb.TopUpApiKeyRequest(key_id=new_id, credits=-1), metadata=admin))
    assert (error.code, error.metadata.get("param")) == (grpc.StatusCode.INVALID_ARGUMENT, "credits")

    listed = await stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=admin)
    assert {k.name for k in listed.api_keys} == {"customer", "admin", "new"}
    assert all(new_secret not in str(k) for k in listed.api_keys)

    revoked = await stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=new_id), metadata=admin)
    assert revoked.api_key.HasField("revoke_time")
    # Revoked through this router: refused at once, not after the key cache expires.
    error = await failure(stub.GetUsage(pb.GetUsageRequest(), metadata=bearer(new_secret)))
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    error = await failure(stub.RevokeApiKey(pb.RevokeApiKeyRequest(key_id="key_nope"), metadata=admin))
    assert error.code == grpc.StatusCode.NOT_FOUND


async def test_a_router_that_reveals_model_names_to_everyone_reveals_them_here_too(accounting, secrets):
    server = GrpcServer([SERVICE_NAME], "127.0.0.1:0")
    servicer = AccountsServicer(accounting, reveal_model_names=True)
    pb_grpc.add_AccountsServiceServicer_to_server(servicer, server.server)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.AccountsServiceStub(channel)
            usage = await stub.GetUsage(pb.GetUsageRequest(), metadata=bearer(secrets["customer"]))
            record = (
                await stub.GetRequest(
                    pb.GetRequestRequest(request_id="req-0"), metadata=bearer(secrets["customer"])
                )
            ).request
    finally:
        await server.stop(None)
    assert [bucket.model for bucket in usage.buckets] == ["acme/large"]
    assert (record.model, record.provider) == ("acme/large", "acme")
