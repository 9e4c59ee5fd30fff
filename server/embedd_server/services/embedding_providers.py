"""EmbeddingProviderService: validate against the model catalog, encrypt the key, map back."""

from __future__ import annotations

from embedd.v1 import embedding_provider_pb2 as pb
from embedd.v1 import embedding_provider_pb2_grpc, values_pb2

from embedd_server.auth import current_principal
from embedd_server.domain import catalog, models
from embedd_server.domain.errors import invalid_field, not_found
from embedd_server.domain.ids import new_id
from embedd_server.domain.validation import (
    Violations,
    check_base_url,
    check_id,
    check_name,
    page_request,
)
from embedd_server.providers.registry import EmbedderRegistry, max_inputs_per_request
from embedd_server.secretbox import SecretBox
from embedd_server.services.base import Context
from embedd_server.services.convert import render_all, timestamp
from embedd_server.store.connections import EmbeddingProviderStore

_TYPE = values_pb2.EmbeddingProviderType
_STATUS = values_pb2.TestStatus.Value
_FAILURE = values_pb2.EmbeddingProviderTestFailure
_MAX_CONCURRENCY = 256


def to_proto(e: models.EmbeddingProvider) -> pb.EmbeddingProvider:
    msg = pb.EmbeddingProvider(
        id=e.id,
        name=e.name,
        provider=_TYPE.Value.Value(e.provider),
        default_model=e.default_model,
        created_at=timestamp(e.created_at),
    )
    if e.base_url:
        msg.base_url = e.base_url
    for name, value in (
        ("dimensions", e.dimensions),
        ("max_inputs_per_request", e.max_inputs_per_request),
        ("max_concurrency", e.max_concurrency),
        ("learned_max_inputs_per_request", e.learned.max_inputs),
        ("learned_max_concurrency", e.learned.concurrency),
    ):
        if value is not None:
            setattr(msg, name, value)
    return msg


def _check_limits(v: Violations, request: pb.CreateEmbeddingProviderRequest, provider: str) -> None:
    most = max_inputs_per_request(provider)
    limits = (
        (
            "max_inputs_per_request",
            _optional_int(request.HasField("max_inputs_per_request"), request.max_inputs_per_request),
            most,
        ),
        (
            "max_concurrency",
            _optional_int(request.HasField("max_concurrency"), request.max_concurrency),
            _MAX_CONCURRENCY,
        ),
    )
    for name, value, ceiling in limits:
        if value is None:
            continue
        if most is None:
            v.add(name, "applies to remote providers only (openai, gemini, voyage)")
        elif ceiling is not None and not 1 <= value <= ceiling:
            v.add(name, f"must be between 1 and {ceiling} for provider {provider!r}")


def _check_model(request: pb.CreateEmbeddingProviderRequest, provider: str) -> int | None:
    """The default model is in the catalog or, for an OpenAI-compatible server, has a declared
    size (domain/catalog.py). Returns that size."""
    declared = _optional_int(request.HasField("dimensions"), request.dimensions)
    if declared is not None and catalog.find_model(provider, request.default_model):
        raise invalid_field(
            "dimensions",
            f"only for a model outside the catalog; {request.default_model!r} has known dimensions",
        )
    catalog.resolve_model(
        provider,
        request.default_model,
        0,
        base_url=request.base_url if request.HasField("base_url") else None,
        declared=declared,
        model_field="default_model",
        dimensions_field="dimensions",
    )
    return declared


def _optional_int(present: bool, value: int) -> int | None:
    return value if present else None


class EmbeddingProviderServicer(embedding_provider_pb2_grpc.EmbeddingProviderServiceServicer):
    def __init__(
        self, store: EmbeddingProviderStore, secrets: SecretBox, embedders: EmbedderRegistry
    ) -> None:
        self._store = store
        self._secrets = secrets
        self._embedders = embedders

    async def CreateEmbeddingProvider(
        self, request: pb.CreateEmbeddingProviderRequest, context: Context
    ) -> pb.EmbeddingProvider:
        p = current_principal()
        v = Violations()
        check_name(v, request.name)
        provider = _TYPE.Value.Name(request.provider)
        compatible = provider == "openai" and request.HasField("base_url")
        if request.provider == _TYPE.unspecified:
            v.add("provider", f"is required: one of {', '.join(catalog.PROVIDERS)}")
        elif provider != "local" and not compatible and not request.api_key.strip():
            v.add("api_key", f"is required for provider {provider!r}")
        if request.HasField("base_url"):
            check_base_url(v, request.base_url, "base_url")
        _check_limits(v, request, provider)
        v.raise_if_any()
        dimensions = _check_model(request, provider)
        provider_id = new_id("embedding_provider")
        api_key = request.api_key.strip()
        row = await self._store.create(
            id=provider_id,
            org_id=p.org_id,
            env_id=p.env_id,
            name=request.name.strip(),
            provider=provider,
            default_model=request.default_model,
            base_url=request.base_url if request.HasField("base_url") else None,
            api_key_enc=self._secrets.encrypt(api_key, bound_to=provider_id) if api_key else None,
            dimensions=dimensions,
            max_inputs_per_request=_optional_int(
                request.HasField("max_inputs_per_request"), request.max_inputs_per_request
            ),
            max_concurrency=_optional_int(request.HasField("max_concurrency"), request.max_concurrency),
        )
        return to_proto(row)

    async def _get(self, provider_id: str) -> models.EmbeddingProvider:
        p = current_principal()
        check_id(provider_id, "emb_", "embedding_provider_id")
        row = await self._store.get(p.org_id, p.env_id, provider_id)
        if row is None:
            raise not_found("embedding_provider_not_found", "Embedding provider", provider_id)
        return row

    async def GetEmbeddingProvider(
        self, request: pb.GetEmbeddingProviderRequest, context: Context
    ) -> pb.EmbeddingProvider:
        return to_proto(await self._get(request.embedding_provider_id))

    async def ListEmbeddingProviders(
        self, request: pb.ListEmbeddingProvidersRequest, context: Context
    ) -> pb.ListEmbeddingProvidersResponse:
        p = current_principal()
        page = await self._store.list(p.org_id, p.env_id, page_request(request.limit, request.cursor))
        return pb.ListEmbeddingProvidersResponse(
            embedding_providers=render_all(page.items, to_proto), next_cursor=page.next_cursor
        )

    async def DeleteEmbeddingProvider(
        self, request: pb.DeleteEmbeddingProviderRequest, context: Context
    ) -> pb.DeleteEmbeddingProviderResponse:
        p = current_principal()
        row = await self._get(request.embedding_provider_id)
        if not await self._store.delete(p.org_id, p.env_id, row.id):
            raise not_found("embedding_provider_not_found", "Embedding provider", row.id)
        self._embedders.evict(row.id)  # its decrypted key goes with it (other replicas: by TTL)
        return pb.DeleteEmbeddingProviderResponse(id=row.id, deleted=True)

    async def TestEmbeddingProvider(
        self, request: pb.TestEmbeddingProviderRequest, context: Context
    ) -> pb.TestEmbeddingProviderResponse:
        row = await self._get(request.embedding_provider_id)
        result = await self._embedders.test(row)
        if result.failure is None:
            return pb.TestEmbeddingProviderResponse(status=_STATUS.ok, latency_ms=result.latency_ms)
        return pb.TestEmbeddingProviderResponse(
            status=_STATUS.failed,
            latency_ms=result.latency_ms,
            reason=_FAILURE.Value.Value(result.failure),
            message=result.message or result.failure,
        )

    async def ListEmbeddingModels(
        self, request: pb.ListEmbeddingModelsRequest, context: Context
    ) -> pb.ListEmbeddingModelsResponse:
        provider = None if request.provider == _TYPE.unspecified else _TYPE.Value.Name(request.provider)
        return pb.ListEmbeddingModelsResponse(
            models=[
                pb.EmbeddingModel(
                    provider=_TYPE.Value.Value(m.provider), model=m.model, dimensions=m.dimensions
                )
                for m in catalog.models_of(provider)
            ]
        )
