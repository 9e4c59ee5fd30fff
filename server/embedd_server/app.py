"""Composition root: builds the pool, stores, secret box and servicers once, and serves them."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import asyncpg
import grpc
import structlog
from embedd.v1 import (
    api_key_pb2,
    api_key_pb2_grpc,
    connection_pb2,
    connection_pb2_grpc,
    embedding_provider_pb2,
    embedding_provider_pb2_grpc,
    environment_pb2,
    environment_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
    task_pb2,
    task_pb2_grpc,
    vector_table_pb2,
    vector_table_pb2_grpc,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # the asyncio servicer (`health.aio`)
from grpc_reflection.v1alpha import reflection

from embedd_server.auth import Authenticator
from embedd_server.config import Settings
from embedd_server.cursors import CursorSealer
from embedd_server.domain.credentials import ConnectionTestResult, PgCredentials
from embedd_server.engine.batch_backfill import BatchSettings
from embedd_server.engine.context import EngineDeps, EngineSettings
from embedd_server.engine.hub import EventHub
from embedd_server.engine.query import QueryEmbeddingCache, QueryEngine, UserPools
from embedd_server.engine.scheduler import SyncScheduler
from embedd_server.engine.stores import StoreFactory
from embedd_server.engine.tables import TableManager
from embedd_server.engine.watch import Watches
from embedd_server.engine.worker import Worker
from embedd_server.interceptors import ServiceInterceptor
from embedd_server.network_policy import NetworkPolicy, http_connector
from embedd_server.providers.http import DEFAULT_POLICY, RetryPolicy
from embedd_server.providers.registry import EmbedderRegistry, SaveLearned
from embedd_server.ratelimit import RateLimiter
from embedd_server.secretbox import SecretBox, decode_key, load_or_create_key_file
from embedd_server.services.api_keys import ApiKeyServicer, EnvironmentServicer
from embedd_server.services.connections import Checker, ConnectionServicer
from embedd_server.services.embedding_providers import EmbeddingProviderServicer
from embedd_server.services.query import QueryServicer
from embedd_server.services.tasks import TaskServicer
from embedd_server.services.vector_tables import SyncServicer, VectorTableServicer
from embedd_server.sinks.qdrant_backend import QdrantBackend
from embedd_server.sources.pg_check import check_postgres
from embedd_server.store.connections import ConnectionStore, EmbeddingProviderStore
from embedd_server.store.db import Channel, Listener, create_pool
from embedd_server.store.events import EVENTS_CHANNEL, EventStore
from embedd_server.store.orgs import AUTH_CHANNEL, OrgStore
from embedd_server.store.ratelimits import RateLimitStore
from embedd_server.store.tasks import TaskStore
from embedd_server.store.vector_tables import VectorTableStore

log = structlog.get_logger(__name__)

SERVICE_NAMES = tuple(
    d.services_by_name[name].full_name
    for d, name in (
        (connection_pb2.DESCRIPTOR, "ConnectionService"),
        (embedding_provider_pb2.DESCRIPTOR, "EmbeddingProviderService"),
        (vector_table_pb2.DESCRIPTOR, "VectorTableService"),
        (sync_pb2.DESCRIPTOR, "SyncService"),
        (query_pb2.DESCRIPTOR, "QueryService"),
        (task_pb2.DESCRIPTOR, "TaskService"),
        (api_key_pb2.DESCRIPTOR, "ApiKeyService"),
        (environment_pb2.DESCRIPTOR, "EnvironmentService"),
    )
)


def secret_box(settings: Settings) -> SecretBox:
    if settings.secret_key is not None:
        return SecretBox(decode_key(settings.secret_key.get_secret_value()))
    if settings.secret_key_file is not None:
        return SecretBox(load_or_create_key_file(settings.secret_key_file))
    raise ValueError(
        "No secret key: set EMBEDD_SECRET_KEY (base64 of 32 random bytes) or EMBEDD_SECRET_KEY_FILE"
    )


def network_policy(settings: Settings) -> NetworkPolicy:
    return NetworkPolicy.from_settings(settings.network_policy, settings.network_allow)


def default_checker(settings: Settings) -> Checker:
    policy = network_policy(settings)

    async def check(creds: PgCredentials, platform_mode: bool) -> ConnectionTestResult:
        return await check_postgres(
            creds, platform_mode=platform_mode, timeout_s=settings.connect_timeout_s, policy=policy
        )

    return check


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC server's limits on a request (config.py says how they relate to Envoy's). The
    soft metadata limit equals the hard one: between the two grpc refuses at random."""
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_metadata_size", settings.grpc_max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", settings.grpc_max_metadata_bytes),
    ]


def qdrant_backend(settings: Settings) -> QdrantBackend | None:
    """The process's Qdrant (managed mode), or None when managed mode is not configured."""
    if settings.qdrant_url:
        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantBackend(url=settings.qdrant_url, api_key=key)
    if settings.qdrant_path is not None:
        settings.qdrant_path.mkdir(parents=True, exist_ok=True)
        return QdrantBackend(path=str(settings.qdrant_path))
    return None


def _add_org_services(server: grpc.aio.Server, orgs: OrgStore, authenticator: Authenticator) -> None:
    """The organisation's own administration: API keys and environments."""
    invalidate = authenticator.invalidate
    api_key_pb2_grpc.add_ApiKeyServiceServicer_to_server(ApiKeyServicer(orgs, invalidate), server)
    environments = EnvironmentServicer(orgs, invalidate)
    environment_pb2_grpc.add_EnvironmentServiceServicer_to_server(environments, server)


def _add_fill_services(
    server: grpc.aio.Server,
    vector_tables: VectorTableStore,
    *,
    tasks: TaskStore,
    worker: Worker | None,
    watches: Watches,
    providers: EmbeddingProviderStore,
) -> None:
    """Backfills, sync and tasks, and their watches."""
    sync_pb2_grpc.add_SyncServiceServicer_to_server(
        SyncServicer(vector_tables, tasks, worker, providers, watches), server
    )
    task_pb2_grpc.add_TaskServiceServicer_to_server(TaskServicer(tasks, watches), server)


def _stores(
    settings: Settings, qdrant: QdrantBackend | None, made: contextlib.AsyncExitStack
) -> StoreFactory:
    if qdrant is not None:
        made.push_async_callback(qdrant.aclose)
    return StoreFactory(qdrant, settings.query_exact_threshold)


def engine_settings(settings: Settings) -> EngineSettings:
    return EngineSettings(
        network=network_policy(settings),
        chunk_rows=settings.engine_chunk_rows,
        inflight_chunks=settings.engine_inflight_chunks,
        max_tasks=settings.engine_max_tasks,
        lease_s=settings.engine_lease_s,
        poll_s=settings.engine_poll_s,
        maintenance_work_mem=settings.index_maintenance_work_mem,
        connect_timeout_s=settings.connect_timeout_s,
        max_sync_backoff_s=settings.sync_max_backoff_s,
        retry_backoff_s=settings.engine_retry_backoff_s,
        cdc_sweep_s=settings.cdc_sweep_s,
        batch=BatchSettings(
            rows_per_batch=settings.batch_rows_per_batch,
            max_file_bytes=settings.batch_max_file_bytes,
            max_in_flight=settings.batch_max_in_flight,
            inputs_per_request=settings.batch_inputs_per_request,
            poll_s=settings.batch_poll_s,
        ),
    )


def _watches(
    settings: Settings,
    pool: asyncpg.Pool,
    tasks: TaskStore,
    vector_tables: VectorTableStore,
    made: contextlib.AsyncExitStack,
) -> Watches:
    """The watch streams and the process's event hub under them (docs/watch.md)."""
    events = EventStore(pool)
    hub = EventHub(events)
    made.push_async_callback(hub.stop)
    return Watches(
        hub, tasks=tasks, tables=vector_tables, events=events, heartbeat_s=settings.watch_heartbeat_s
    )


def _listener(settings: Settings, authenticator: Authenticator, hub: EventHub) -> Listener:
    """One LISTEN connection per process: the auth cache's invalidations and the events of
    watched vector tables (after a reconnect, the hub reads every watched table again)."""
    auth = Channel(
        AUTH_CHANNEL,
        authenticator.invalidate,
        on_ready=authenticator.enable_cache,
        on_lost=authenticator.disable_cache,
    )
    events = Channel(EVENTS_CHANNEL, hub.notify, on_ready=hub.resync)
    return Listener(settings.database_url.get_secret_value(), [auth, events])


@dataclass
class Service:
    """A started server and what it owns."""

    server: grpc.aio.Server
    pool: asyncpg.Pool
    port: int
    orgs: OrgStore
    health: HealthServicer
    http: aiohttp.ClientSession
    embedders: EmbedderRegistry
    worker: Worker | None
    scheduler: SyncScheduler | None
    listener: Listener
    authenticator: Authenticator
    hub: EventHub
    query_engine: QueryEngine | None = None
    limiter: RateLimiter | None = None
    qdrant: QdrantBackend | None = None

    async def stop(self, grace: float | None = None) -> None:
        """Stops taking calls, lets in-flight ones finish within `grace`, then closes the
        embedders, the HTTP session and the pool."""
        await self.health.enter_graceful_shutdown()
        self.hub.close()  # watch streams would otherwise last the whole grace period
        await self.server.stop(grace)
        if self.worker is not None:
            await self.worker.stop()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.query_engine is not None:
            await self.query_engine.aclose()
        await self.listener.stop()
        await self.hub.stop()
        if self.limiter is not None:
            await self.limiter.stop()
        if self.qdrant is not None:
            await self.qdrant.aclose()
        await self.embedders.aclose()
        await self.http.close()
        with contextlib.suppress(Exception):
            await self.pool.close()


# Builds the embedder registry from the shared HTTP session, the secret box, the retry policy
# of provider requests and where what it learns about a provider's server is saved.
EmbeddersFactory = Callable[[aiohttp.ClientSession, SecretBox, RetryPolicy, SaveLearned], EmbedderRegistry]


def default_embedders(
    session: aiohttp.ClientSession, box: SecretBox, policy: RetryPolicy, save: SaveLearned
) -> EmbedderRegistry:
    return EmbedderRegistry(session, box, policy, save_learned=save)


async def start(
    settings: Settings,
    *,
    checker: Checker | None = None,
    embedders: EmbeddersFactory = default_embedders,
    clock: Callable[[], float] = time.monotonic,
) -> Service:
    """Builds every dependency once and starts serving. What tests replace is injected here -
    the connection checker, the embedder registry, the engine's clock - never patched into a
    running service. If a step fails, everything the earlier steps made is closed again."""
    async with contextlib.AsyncExitStack() as made:
        pool = await create_pool(
            settings.database_url.get_secret_value(),
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            idle_in_transaction_timeout_s=settings.db_idle_in_transaction_timeout_s,
        )
        made.push_async_callback(pool.close)
        box = secret_box(settings)
        policy = network_policy(settings)
        stores = _stores(settings, qdrant := qdrant_backend(settings), made)  # a folder in use fails early
        orgs = OrgStore(pool)
        # No global connection cap: each provider's limiter bounds its own requests in flight,
        # and a shared cap would let one hung provider starve the others.
        http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.provider_timeout_s),
            connector=http_connector(policy, limit=0, ttl_dns_cache=300),
        )
        made.push_async_callback(http.close)
        connections, providers = ConnectionStore(pool), EmbeddingProviderStore(pool)
        registry = embedders(
            http,
            box,
            dataclasses.replace(DEFAULT_POLICY, max_attempts=settings.provider_max_attempts),
            providers.save_learned,
        )
        made.push_async_callback(registry.aclose)
        authenticator = Authenticator(orgs)
        vector_tables, tasks = VectorTableStore(pool), TaskStore(pool)
        watches = _watches(settings, pool, tasks, vector_tables, made)
        listener = _listener(settings, authenticator, watches.hub)
        limiter = RateLimiter(RateLimitStore(pool)) if settings.rate_limits_enabled else None
        server = grpc.aio.server(
            interceptors=[
                ServiceInterceptor(authenticator, CursorSealer(box.derive_key("list cursors")), limiter)
            ],
            options=server_options(settings),
        )
        made.push_async_callback(server.stop, None)
        connection_pb2_grpc.add_ConnectionServiceServicer_to_server(
            ConnectionServicer(connections, box, checker or default_checker(settings)), server
        )
        embedding_provider_pb2_grpc.add_EmbeddingProviderServiceServicer_to_server(
            EmbeddingProviderServicer(providers, box, registry), server
        )
        _add_org_services(server, orgs, authenticator)
        deps = EngineDeps(
            tasks=tasks,
            vector_tables=vector_tables,
            connections=connections,
            providers=providers,
            embedders=registry,
            secrets=box,
            settings=engine_settings(settings),
            clock=clock,
            stores=stores,
        )
        worker = Worker(deps) if settings.engine_enabled else None
        scheduler = SyncScheduler(deps) if settings.engine_enabled else None
        vector_table_pb2_grpc.add_VectorTableServiceServicer_to_server(
            VectorTableServicer(
                store=vector_tables,
                connections=connections,
                providers=providers,
                tables=TableManager(settings.connect_timeout_s, policy, stores),
                secrets=box,
                wake=worker.wake if worker is not None else None,
            ),
            server,
        )
        _add_fill_services(
            server, vector_tables, tasks=tasks, worker=worker, watches=watches, providers=providers
        )
        query_engine = QueryEngine(
            connections=connections,
            providers=providers,
            embedders=registry,
            secrets=box,
            pools=UserPools(policy=policy, connect_timeout_s=settings.connect_timeout_s),
            cache=QueryEmbeddingCache(),
            stores=stores,
        )
        made.push_async_callback(query_engine.aclose)
        query_pb2_grpc.add_QueryServiceServicer_to_server(QueryServicer(vector_tables, query_engine), server)

        health_servicer = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        await listener.start()
        made.push_async_callback(listener.stop)
        if limiter is not None:
            limiter.start()
            made.push_async_callback(limiter.stop)
        port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
        await server.start()
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        if worker is not None and scheduler is not None:
            worker.start()
            made.push_async_callback(worker.stop)
            scheduler.start()
            made.push_async_callback(scheduler.stop)
        service = Service(
            server=server,
            pool=pool,
            port=port,
            orgs=orgs,
            health=health_servicer,
            http=http,
            embedders=registry,
            worker=worker,
            scheduler=scheduler,
            listener=listener,
            authenticator=authenticator,
            hub=watches.hub,
            query_engine=query_engine,
            limiter=limiter,
            qdrant=qdrant,
        )
        made.pop_all()  # started: the service owns all of it now (Service.stop)
    log.info("serving", grpc_port=port, engine=worker is not None)
    return service
