// The seed's steps 1-6 through the TypeScript client, against a real server over gRPC.
// Configured like the CLI, from the variables `.embedd/dev.env` exports (EMBEDD_GRPC,
// EMBEDD_API_KEY, DEMO_DB_*, EMBEDD_LOCAL_MODEL); tests/integration/test_typescript_client.py
// runs it against the test server.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import {
  ColumnRole_Value,
  ConnectionProvider_Value,
  createEmbeddClient,
  EmbeddError,
  EmbeddingProviderType_Value,
  FilterType_Value,
  Mode_Value,
  SyncStatus_Value,
  TaskStatus_Value,
  TestStatus_Value,
  type WatchTaskResponse,
} from "../src/index.js";

function env(name: string): string {
  const value = process.env[name];
  assert.ok(value, `${name} is not set (source .embedd/dev.env)`);
  return value;
}

const client = createEmbeddClient({
  baseUrl: `http://${env("EMBEDD_GRPC")}`,
  apiKey: env("EMBEDD_API_KEY"),
});
const cleanup: Array<() => Promise<unknown>> = [];

after(async () => {
  for (const undo of cleanup.reverse()) await undo();
});

test("the seed's steps 1-6 over gRPC", async () => {
  // Step 1: a connection.
  const conn = await client.connections.createConnection({
    provider: ConnectionProvider_Value.postgresql,
    name: `product-db-ts-${process.pid}`,
    mode: Mode_Value.platform,
    credentials: {
      host: env("DEMO_DB_HOST"),
      port: Number(env("DEMO_DB_PORT")),
      database: env("DEMO_DB_NAME"),
      user: env("DEMO_DB_USER"),
      password: env("DEMO_DB_PASSWORD"),
    },
  });
  cleanup.push(() => client.connections.deleteConnection({ connectionId: conn.id }));
  assert.match(conn.id, /^conn_/);

  // Step 2: test it.
  const tested = await client.connections.testConnection({ connectionId: conn.id });
  assert.equal(tested.status, TestStatus_Value.ok, tested.message);

  // Step 3: an embedding provider (the local one: no key, no network).
  const emb = await client.embeddingProviders.createEmbeddingProvider({
    name: `local-ts-${process.pid}`,
    provider: EmbeddingProviderType_Value.local,
    defaultModel: env("EMBEDD_LOCAL_MODEL"),
  });
  cleanup.push(() => client.embeddingProviders.deleteEmbeddingProvider({ embeddingProviderId: emb.id }));
  assert.match(emb.id, /^emb_/);

  // Step 4: a vector table, the seed's mapping.
  const vt = await client.vectorTables.createVectorTable({
    vectorTable: {
      name: `products-search-ts-${process.pid}`,
      connectionId: conn.id,
      embeddingProviderId: emb.id,
      sourceTable: "public.products",
      primaryKeyColumn: "id",
      embeddingModel: env("EMBEDD_LOCAL_MODEL"),
      embeddingDimensions: 384,
      mode: Mode_Value.platform,
      columns: [
        { name: "name", role: ColumnRole_Value.embedding, ordinal: 1, namePrefix: "Product: " },
        { name: "description", role: ColumnRole_Value.embedding, ordinal: 2, namePrefix: "Description: " },
        { name: "category", role: ColumnRole_Value.metadata, filterType: FilterType_Value.keyword },
        { name: "price", role: ColumnRole_Value.metadata, filterType: FilterType_Value.float },
        { name: "in_stock", role: ColumnRole_Value.metadata, filterType: FilterType_Value.boolean },
      ],
    },
  });
  cleanup.push(() => client.vectorTables.deleteVectorTable({ vectorTableId: vt.id, dropVectors: true }));
  assert.equal(vt.syncStatus, SyncStatus_Value.pending);
  assert.match(vt.platformVectorRef, /^embedd_vt_[0-9a-f]{8}_products_search_ts_/);

  // Step 5: backfill, and watch it over the gRPC stream until it is done.
  const task = await client.sync.backfillVectorTable({ vectorTableId: vt.id });
  assert.match(task.taskId, /^task_/);
  const events: WatchTaskResponse[] = [];
  for await (const event of client.tasks.watchTask({ taskId: task.taskId })) {
    events.push(event);
    if (event.done) break;
  }
  const last = events.at(-1);
  assert.ok(last?.done && last.task, "the stream ended without a final event");
  assert.equal(last.task.status, TaskStatus_Value.completed, last.task.lastError);
  assert.ok(last.task.progress && last.task.progress.rowsProcessed > 0);
  assert.equal(last.task.progress.rowsProcessed, last.task.progress.rowsTotal);
  const status = await client.sync.getSyncStatus({ vectorTableId: vt.id });
  assert.equal(status.syncStatus, SyncStatus_Value.synced);
  assert.equal(status.syncedRows, last.task.progress.rowsTotal);

  // Step 6: query, the seed's example verbatim.
  const { results } = await client.query.queryVectorTable({
    vectorTableId: vt.id,
    query: "something warm for hiking",
    limit: 5,
    filters: { in_stock: { eq: true }, price: { lte: 150 } },
  });
  assert.ok(results.length > 0 && results.length <= 5);
  for (const hit of results) {
    assert.equal(hit.metadata?.["in_stock"], true);
    assert.ok(Number(hit.metadata?.["price"]) <= 150);
  }
  const scores = results.map((hit) => hit.score);
  assert.deepEqual(scores, [...scores].sort((a, b) => b - a));
});

test("a failure is an EmbeddError with the Embedd code, request id and field violations", async () => {
  await assert.rejects(client.connections.getConnection({ connectionId: "conn_doesnotexist" }), (err) => {
    assert.ok(err instanceof EmbeddError);
    assert.equal(err.reason, "connection_not_found");
    assert.ok(err.requestId);
    return true;
  });
  await assert.rejects(client.query.queryVectorTable({ vectorTableId: "vt_x", query: "q", limit: 1000 }), (err) => {
    assert.ok(err instanceof EmbeddError);
    assert.equal(err.reason, "validation_error");
    assert.ok(err.violations.some((v) => v.field === "limit"), JSON.stringify(err.violations));
    return true;
  });
  const watchUnknown = async () => {
    for await (const _ of client.tasks.watchTask({ taskId: "task_doesnotexist" })) {
      assert.fail("an unknown task has no events");
    }
  };
  await assert.rejects(watchUnknown(), (err) => {
    assert.ok(err instanceof EmbeddError);
    assert.equal(err.reason, "task_not_found");
    return true;
  });
});
