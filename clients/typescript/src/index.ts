// The TypeScript client: the generated embedd.v1 services (src/gen, `make gen`) over Connect's
// gRPC transport for Node (HTTP/2, straight to the server; Envoy is only for REST).
//
//   const client = createEmbeddClient({ baseUrl: `http://${process.env.EMBEDD_GRPC}`,
//                                       apiKey: process.env.EMBEDD_API_KEY! });
//   const conn = await client.connections.createConnection({ ... });
//
// Every failure is an `EmbeddError` (a ConnectError) carrying the Embedd error code
// (`reason`, google.rpc.ErrorInfo), the request id and BadRequest field violations.
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ApiKeyService } from "./gen/embedd/v1/api_key_pb.js";
import { ConnectionService } from "./gen/embedd/v1/connection_pb.js";
import { EmbeddingProviderService } from "./gen/embedd/v1/embedding_provider_pb.js";
import { EnvironmentService } from "./gen/embedd/v1/environment_pb.js";
import { QueryService } from "./gen/embedd/v1/query_pb.js";
import { SyncService } from "./gen/embedd/v1/sync_pb.js";
import { TaskService } from "./gen/embedd/v1/task_pb.js";
import { VectorTableService } from "./gen/embedd/v1/vector_table_pb.js";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export * from "./gen/embedd/v1/api_key_pb.js";
export * from "./gen/embedd/v1/connection_pb.js";
export * from "./gen/embedd/v1/embedding_provider_pb.js";
export * from "./gen/embedd/v1/environment_pb.js";
export * from "./gen/embedd/v1/query_pb.js";
export * from "./gen/embedd/v1/sync_pb.js";
export * from "./gen/embedd/v1/task_pb.js";
export * from "./gen/embedd/v1/values_pb.js";
export * from "./gen/embedd/v1/vector_table_pb.js";

export const DEFAULT_TIMEOUT_MS = 30_000;

export interface EmbeddClientOptions {
  /** The gRPC server, e.g. `http://127.0.0.1:50051`. */
  baseUrl: string;
  /** An API key, `sk_...`. */
  apiKey: string;
  /** Scopes every call to this environment (id or name); `prod` when absent. */
  environmentId?: string;
  /** Default deadline of unary calls (streams have none); per call: `{ timeoutMs }`. */
  timeoutMs?: number;
}

export interface FieldViolation {
  field: string;
  description: string;
}

/** A failed call: `reason` is the Embedd error code ("" when the server sent none). */
export class EmbeddError extends ConnectError {
  readonly reason: string;
  readonly requestId: string | undefined;
  readonly violations: FieldViolation[];

  constructor(cause: ConnectError) {
    // `name` stays "ConnectError": Connect recognises its errors by it and would wrap ours.
    super(cause.rawMessage, cause.code, cause.metadata, undefined, cause);
    this.details = cause.details;
    const info = cause.findDetails(ErrorInfoSchema)[0];
    this.reason = info?.reason ?? "";
    this.requestId = info?.metadata["request_id"];
    this.violations = cause
      .findDetails(BadRequestSchema)
      .flatMap((bad) => bad.fieldViolations)
      .map((v) => ({ field: v.field, description: v.description }));
  }

  // ConnectError's instanceof accepts any ConnectError (it duck-types across realms), which
  // would make every ConnectError pass for an EmbeddError; this one checks the prototype.
  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null && EmbeddError.prototype.isPrototypeOf(value);
  }
}

function toEmbeddError(err: unknown): EmbeddError {
  return err instanceof EmbeddError ? err : new EmbeddError(ConnectError.from(err, Code.Unknown));
}

async function* typedErrors<T>(messages: AsyncIterable<T>): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (err) {
    throw toEmbeddError(err);
  }
}

function authAndErrors(options: EmbeddClientOptions): Interceptor {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${options.apiKey}`);
    if (options.environmentId) req.header.set("x-environment-id", options.environmentId);
    try {
      const res = await next(req);
      return res.stream ? { ...res, message: typedErrors(res.message) } : res;
    } catch (err) {
      throw toEmbeddError(err);
    }
  };
}

// Connect's `defaultTimeoutMs` would end watch streams too; only unary calls get a default.
function unaryDeadline(inner: Transport, defaultMs: number): Transport {
  return {
    unary: (method, signal, timeoutMs, header, input, contextValues) =>
      inner.unary(method, signal, timeoutMs ?? defaultMs, header, input, contextValues),
    stream: (method, signal, timeoutMs, header, input, contextValues) =>
      inner.stream(method, signal, timeoutMs, header, input, contextValues),
  };
}

export interface EmbeddClient {
  connections: Client<typeof ConnectionService>;
  embeddingProviders: Client<typeof EmbeddingProviderService>;
  vectorTables: Client<typeof VectorTableService>;
  sync: Client<typeof SyncService>;
  query: Client<typeof QueryService>;
  tasks: Client<typeof TaskService>;
  apiKeys: Client<typeof ApiKeyService>;
  environments: Client<typeof EnvironmentService>;
}

export function createEmbeddClient(options: EmbeddClientOptions): EmbeddClient {
  const transport = unaryDeadline(
    createGrpcTransport({ baseUrl: options.baseUrl, interceptors: [authAndErrors(options)] }),
    options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
  );
  return {
    connections: createClient(ConnectionService, transport),
    embeddingProviders: createClient(EmbeddingProviderService, transport),
    vectorTables: createClient(VectorTableService, transport),
    sync: createClient(SyncService, transport),
    query: createClient(QueryService, transport),
    tasks: createClient(TaskService, transport),
    apiKeys: createClient(ApiKeyService, transport),
    environments: createClient(EnvironmentService, transport),
  };
}
