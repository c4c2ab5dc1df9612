"""The official OpenFGA Python SDK (PyPI `openfga-sdk`) as a client of
`fga-dataplane serve`. Run by tests/sdk.rs with the server's URL and key in
FGA_API_URL and FGA_API_TOKEN; prints `sdk: ok` when every step behaved as
against OpenFGA, and exits non-zero (with the reason) otherwise."""

import datetime
import os
import sys

from openfga_sdk import RelationshipCondition, WriteAuthorizationModelRequest
from openfga_sdk.client import ClientConfiguration
from openfga_sdk.client.models import (
    ClientBatchCheckItem,
    ClientBatchCheckRequest,
    ClientCheckRequest,
    ClientListObjectsRequest,
    ClientReadChangesRequest,
    ClientTuple,
    ClientWriteRequest,
)
from openfga_sdk.credentials import CredentialConfiguration, Credentials
from openfga_sdk.exceptions import ValidationException
from openfga_sdk.sync import OpenFgaClient

MODEL = {
    "schema_version": "1.1",
    "type_definitions": [
        {"type": "user"},
        {
            "type": "doc",
            "relations": {"viewer": {"this": {}}},
            "metadata": {
                "relations": {
                    "viewer": {"directly_related_user_types": [{"type": "user"}]}
                }
            },
        },
    ],
}


def expect(cond, what):
    if not cond:
        print(f"sdk: FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def main():
    config = ClientConfiguration(
        api_url=os.environ["FGA_API_URL"],
        credentials=Credentials(
            method="api_token",
            configuration=CredentialConfiguration(api_token=os.environ["FGA_API_TOKEN"]),
        ),
    )
    with OpenFgaClient(config) as fga:
        from openfga_sdk.models.create_store_request import CreateStoreRequest

        store = fga.create_store(CreateStoreRequest(name="sdk-store"))
        fga.set_store_id(store.id)
        model = fga.write_authorization_model(
            WriteAuthorizationModelRequest(**MODEL)
        )
        fga.set_authorization_model_id(model.authorization_model_id)
        fga.write(
            ClientWriteRequest(
                writes=[ClientTuple(user="user:anne", relation="viewer", object="doc:1")]
            )
        )
        # The SDK sends `context` with every query: accepted and ignored.
        ctx = {"ip_address": "10.0.0.1"}
        r = fga.check(
            ClientCheckRequest(
                user="user:anne", relation="viewer", object="doc:1", context=ctx
            )
        )
        expect(r.allowed is True, f"check with context: {r}")
        r = fga.list_objects(
            ClientListObjectsRequest(
                user="user:anne", relation="viewer", type="doc", context=ctx
            )
        )
        expect(r.objects == ["doc:1"], f"list_objects with context: {r}")
        r = fga.batch_check(
            ClientBatchCheckRequest(
                checks=[
                    ClientBatchCheckItem(
                        user="user:anne",
                        relation="viewer",
                        object="doc:1",
                        context=ctx,
                        correlation_id="a",
                    ),
                    ClientBatchCheckItem(
                        user="user:bob", relation="viewer", object="doc:1", correlation_id="b"
                    ),
                ]
            )
        )
        got = {x.correlation_id: x.allowed for x in r.result}
        expect(got == {"a": True, "b": False}, f"batch_check: {got}")
        # A tuple with a condition is refused (a validation error naming it),
        # and nothing is written.
        try:
            fga.write(
                ClientWriteRequest(
                    writes=[
                        ClientTuple(
                            user="user:bob",
                            relation="viewer",
                            object="doc:1",
                            condition=RelationshipCondition(
                                name="in_office", context={"ip": "10.0.0.1"}
                            ),
                        )
                    ]
                )
            )
            expect(False, "a tuple with a condition was written")
        except ValidationException as e:
            expect("in_office" in str(e), f"the error names the condition: {e}")
        r = fga.check(ClientCheckRequest(user="user:bob", relation="viewer", object="doc:1"))
        expect(r.allowed is False, "bob is not a viewer")
        # An unknown model id is a validation error (400), as in OpenFGA.
        try:
            fga.read_authorization_model(
                options={"authorization_model_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}
            )
            expect(False, "an unknown model was found")
        except ValidationException as e:
            expect(e.code == "authorization_model_not_found", f"{e}")
        # The store list by name, changes from a start time.
        stores = fga.list_stores(options={"name": "sdk-store"}).stores
        expect([s.id for s in stores] == [store.id], f"list_stores by name: {stores}")
        future = datetime.datetime(9999, 1, 1, tzinfo=datetime.timezone.utc)
        r = fga.read_changes(ClientReadChangesRequest(type="doc", start_time=future.isoformat()))
        expect(r.changes == [], f"no changes after 9999: {r}")
        r = fga.read_changes(ClientReadChangesRequest(type="doc"))
        expect(len(r.changes) == 1, f"one change: {r}")
    print("sdk: ok")


if __name__ == "__main__":
    main()
