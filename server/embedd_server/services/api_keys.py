"""ApiKeyService and EnvironmentService: the organisation's own administration."""

from __future__ import annotations

from collections.abc import Callable

from embedd.v1 import api_key_pb2, api_key_pb2_grpc, environment_pb2, environment_pb2_grpc, values_pb2

from embedd_server.auth import current_principal
from embedd_server.domain import models
from embedd_server.domain.errors import ApiError, Kind, not_found
from embedd_server.domain.validation import (
    Violations,
    check_env_name,
    check_id,
    check_name,
    page_request,
)
from embedd_server.services.base import Context
from embedd_server.services.convert import render_all, timestamp
from embedd_server.store.orgs import OrgStore

_PERMISSION = values_pb2.Permission


def key_to_proto(k: models.ApiKey) -> api_key_pb2.ApiKey:
    return api_key_pb2.ApiKey(
        id=k.id,
        name=k.name,
        key_prefix=k.key_prefix,
        permission=_PERMISSION.Value.Value(k.permission),
        created_at=timestamp(k.created_at),
        revoked_at=timestamp(k.revoked_at),
    )


def env_to_proto(e: models.Environment) -> environment_pb2.Environment:
    return environment_pb2.Environment(
        id=e.id, name=e.name, created_at=timestamp(e.created_at), is_default=e.is_default
    )


class ApiKeyServicer(api_key_pb2_grpc.ApiKeyServiceServicer):
    def __init__(self, orgs: OrgStore, invalidate: Callable[[str], None]) -> None:
        self._orgs = orgs
        self._invalidate = invalidate  # this process's auth cache; others hear a NOTIFY

    async def CreateApiKey(
        self, request: api_key_pb2.CreateApiKeyRequest, context: Context
    ) -> api_key_pb2.ApiKey:
        p = current_principal()
        v = Violations()
        check_name(v, request.name)
        v.raise_if_any()
        permission = "read_only" if request.permission == _PERMISSION.read_only else "full"
        record, secret = await self._orgs.create_api_key(p.org_id, request.name.strip(), permission)
        created = key_to_proto(record)
        created.key = secret  # shown this once; only its hash is stored
        return created

    async def ListApiKeys(
        self, request: api_key_pb2.ListApiKeysRequest, context: Context
    ) -> api_key_pb2.ListApiKeysResponse:
        p = current_principal()
        page = await self._orgs.list_api_keys(p.org_id, page_request(request.limit, request.cursor))
        return api_key_pb2.ListApiKeysResponse(
            api_keys=render_all(page.items, key_to_proto), next_cursor=page.next_cursor
        )

    async def DeleteApiKey(
        self, request: api_key_pb2.DeleteApiKeyRequest, context: Context
    ) -> api_key_pb2.ApiKey:
        p = current_principal()
        check_id(request.api_key_id, "key_", "api_key_id")
        record = await self._orgs.revoke_api_key(p.org_id, request.api_key_id)
        if record is None:
            raise not_found("api_key_not_found", "API key", request.api_key_id)
        self._invalidate(record.id)
        return key_to_proto(record)


class EnvironmentServicer(environment_pb2_grpc.EnvironmentServiceServicer):
    def __init__(self, orgs: OrgStore, invalidate: Callable[[str], None]) -> None:
        self._orgs = orgs
        self._invalidate = invalidate

    async def CreateEnvironment(
        self, request: environment_pb2.CreateEnvironmentRequest, context: Context
    ) -> environment_pb2.Environment:
        p = current_principal()
        v = Violations()
        check_env_name(v, request.name)
        v.raise_if_any()
        env = await self._orgs.create_environment(p.org_id, request.name)
        if env is None:
            raise ApiError(
                Kind.ALREADY_EXISTS,
                "environment_conflict",
                f"An environment named {request.name!r} already exists. Pick another name.",
            )
        return env_to_proto(env)

    async def _get(self, env_id: str) -> models.Environment:
        p = current_principal()
        check_id(env_id, "env_", "environment_id")
        env = await self._orgs.find_environment(p.org_id, env_id)
        if env is None or env.id != env_id:
            raise not_found("environment_not_found", "Environment", env_id)
        return env

    async def GetEnvironment(
        self, request: environment_pb2.GetEnvironmentRequest, context: Context
    ) -> environment_pb2.Environment:
        return env_to_proto(await self._get(request.environment_id))

    async def ListEnvironments(
        self, request: environment_pb2.ListEnvironmentsRequest, context: Context
    ) -> environment_pb2.ListEnvironmentsResponse:
        p = current_principal()
        page = await self._orgs.list_environments(p.org_id, page_request(request.limit, request.cursor))
        return environment_pb2.ListEnvironmentsResponse(
            environments=render_all(page.items, env_to_proto), next_cursor=page.next_cursor
        )

    async def DeleteEnvironment(
        self, request: environment_pb2.DeleteEnvironmentRequest, context: Context
    ) -> environment_pb2.DeleteEnvironmentResponse:
        p = current_principal()
        env = await self._get(request.environment_id)
        if env.is_default:
            raise ApiError(
                Kind.CONFLICT,
                "environment_conflict",
                f"{env.name!r} is the default environment and cannot be deleted.",
            )
        if not await self._orgs.delete_environment(p.org_id, env.id):
            raise not_found("environment_not_found", "Environment", env.id)
        self._invalidate(env.id)
        return environment_pb2.DeleteEnvironmentResponse(id=env.id, deleted=True)
