/**
 * The shim's event publisher: task events forwarded to the daemon with
 * `containerd.services.events.ttrpc.v1.Events/Forward` at `TTRPC_ADDRESS`, as containerd's
 * `RemoteEventsPublisher`, with these guarantees:
 *
 * - Events go out one at a time, in the order they were published (containerd's requeue can
 *   reorder them; here an exit never overtakes the start it follows).
 * - When the daemon is unreachable (not running, restarting) events wait in a bounded queue and
 *   the head is retried with exponential backoff, reconnecting each time, until it is delivered.
 * - An event is sent again only when the daemon did not acknowledge it; an error answer from a
 *   reachable daemon is retried a few times, then the event is dropped with an error log.
 * - When the queue is full the oldest event that is not a `TaskExit` is dropped, so exits are
 *   the last thing lost.
 *
 * @module
 */

import { create, type DescMessage, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { AnySchema, timestampNow } from "@bufbuild/protobuf/wkt";
import { Events } from "../api/gen/containerd/services/ttrpc/events/v1/events_pb.ts";
import type { Logger } from "../log.ts";
import { isKind, TainerdError } from "../plugins/errdefs.ts";
import { createTtrpcClient, TtrpcClient } from "../ttrpc/client.ts";
import { socketPath } from "./address.ts";

/** The metadata key carrying the namespace on ttrpc calls (containerd's `namespaces/ttrpc.go`). */
export const TTRPC_NAMESPACE_HEADER = "containerd-namespace-ttrpc";

/** Task event topics, as containerd's `runtime` package. */
export const Topics = {
  create: "/tasks/create",
  start: "/tasks/start",
  exit: "/tasks/exit",
  delete: "/tasks/delete",
  oom: "/tasks/oom",
  execAdded: "/tasks/exec-added",
  execStarted: "/tasks/exec-started",
  paused: "/tasks/paused",
  resumed: "/tasks/resumed",
  checkpointed: "/tasks/checkpointed",
} as const;

/** Options of {@linkcode EventPublisher}. */
export interface PublisherOptions {
  /** The daemon's ttrpc address (a path or `unix://` address); empty: events are dropped. */
  address: string;
  /** The namespace stamped on every envelope. */
  namespace: string;
  /** Where delivery problems are logged. */
  log: Logger;
  /** Most events kept while the daemon is unreachable. Default 2048 (containerd's queue). */
  maxQueue?: number;
  /** Timeout of one Forward call. Default 5 s. */
  timeoutMs?: number;
  /** First retry delay; doubled on each failure up to `maxBackoffMs`. Default 50 ms. */
  minBackoffMs?: number;
  /** Longest retry delay. Default 2 s. */
  maxBackoffMs?: number;
  /** Attempts for an event the daemon answers with an error. Default 5. */
  maxAttempts?: number;
}

interface Item {
  topic: string;
  typeName: string;
  payload: Uint8Array;
  attempts: number;
}

const EXIT_TYPE = "containerd.events.TaskExit";

/** Whether an error means the daemon did not get (or did not answer) the call. */
function isTransportError(err: unknown): boolean {
  return !(err instanceof TainerdError) || isKind(err, "Unavailable") ||
    isKind(err, "NotFound") || isKind(err, "Canceled") || isKind(err, "DeadlineExceeded");
}

/** Publishes task events to the daemon; see the module documentation for the guarantees. */
export class EventPublisher {
  readonly #path: string;
  readonly #namespace: string;
  readonly #log: Logger;
  readonly #maxQueue: number;
  readonly #timeoutMs: number;
  readonly #minBackoff: number;
  readonly #maxBackoff: number;
  readonly #maxAttempts: number;
  readonly #queue: Item[] = [];
  #client: TtrpcClient | null = null;
  #pumping: Promise<void> | null = null;
  #closed = false;
  #wake: (() => void) | null = null;
  #idle: Array<() => void> = [];
  #delivered = 0;
  #dropped = 0;

  constructor(options: PublisherOptions) {
    this.#path = socketPath(options.address);
    this.#namespace = options.namespace;
    this.#log = options.log;
    this.#maxQueue = options.maxQueue ?? 2048;
    this.#timeoutMs = options.timeoutMs ?? 5000;
    this.#minBackoff = options.minBackoffMs ?? 50;
    this.#maxBackoff = options.maxBackoffMs ?? 2000;
    this.#maxAttempts = options.maxAttempts ?? 5;
  }

  /** Events waiting to be delivered. */
  get pending(): number {
    return this.#queue.length;
  }

  /** Events delivered so far. */
  get delivered(): number {
    return this.#delivered;
  }

  /** Events dropped so far (queue overflow, repeated refusals, no daemon address). */
  get dropped(): number {
    return this.#dropped;
  }

  /**
   * Queues `event` (of message type `schema`) under `topic`. Returns at once; delivery happens
   * in the background, in order.
   */
  publish<S extends DescMessage>(topic: string, schema: S, event: MessageInitShape<S>): void {
    if (this.#closed) {
      this.#log.warn("event published after the publisher closed; dropped", { topic });
      this.#dropped++;
      return;
    }
    if (this.#path === "") {
      this.#log.debug("no daemon ttrpc address; event dropped", { topic });
      this.#dropped++;
      return;
    }
    const payload = toBinary(schema, create(schema, event));
    if (this.#queue.length >= this.#maxQueue) this.#evictOne();
    this.#queue.push({ topic, typeName: schema.typeName, payload, attempts: 0 });
    this.#pumping ??= this.#pump().finally(() => this.#pumping = null);
  }

  /** Resolves when the queue is empty, or with false when `timeoutMs` passes first. */
  async flush(timeoutMs: number): Promise<boolean> {
    if (this.#queue.length === 0) return true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const drained = new Promise<boolean>((resolve) => this.#idle.push(() => resolve(true)));
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    try {
      return await Promise.race([drained, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Stops publishing: waits up to `timeoutMs` for queued events to go out, then drops the rest
   * and closes the connection.
   */
  async close(timeoutMs = 5000): Promise<void> {
    if (this.#closed) return;
    const flushed = await this.flush(timeoutMs);
    this.#closed = true;
    if (!flushed) {
      this.#log.error("events not delivered before shutdown", { count: this.#queue.length });
      this.#dropped += this.#queue.length;
      this.#queue.length = 0;
    }
    this.#wake?.();
    await this.#pumping;
    await this.#client?.close();
    this.#client = null;
  }

  #evictOne(): void {
    let i = this.#queue.findIndex((item, index) => index > 0 && item.typeName !== EXIT_TYPE);
    if (i < 0) i = this.#queue.length > 1 ? 1 : 0;
    const [evicted] = this.#queue.splice(i, 1);
    this.#dropped++;
    this.#log.error("event queue full; dropping an event", { topic: evicted.topic });
  }

  async #connect(): Promise<TtrpcClient> {
    if (this.#client !== null && !this.#client.closed) return this.#client;
    await this.#client?.close();
    this.#client = null;
    this.#client = await TtrpcClient.connect(this.#path, {
      metadata: { [TTRPC_NAMESPACE_HEADER]: this.#namespace },
    });
    return this.#client;
  }

  async #send(item: Item): Promise<void> {
    const client = await this.#connect();
    const events = createTtrpcClient(Events, client);
    await events.forward({
      envelope: {
        timestamp: timestampNow(),
        namespace: this.#namespace,
        topic: item.topic,
        event: create(AnySchema, { typeUrl: item.typeName, value: item.payload }),
      },
    }, { timeoutMs: this.#timeoutMs });
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#wake = null;
        resolve();
      }, ms);
      this.#wake = () => {
        if (!this.#closed) return;
        clearTimeout(timer);
        this.#wake = null;
        resolve();
      };
    });
  }

  async #pump(): Promise<void> {
    let backoff = this.#minBackoff;
    while (this.#queue.length > 0 && !this.#closed) {
      const item = this.#queue[0];
      try {
        await this.#send(item);
        if (this.#queue[0] === item) this.#queue.shift();
        this.#delivered++;
        backoff = this.#minBackoff;
        continue;
      } catch (err) {
        const transport = isTransportError(err);
        if (transport) {
          await this.#client?.close();
          this.#client = null;
        } else {
          item.attempts++;
        }
        const detail = err instanceof Error ? err.message : String(err);
        if (!transport && item.attempts >= this.#maxAttempts) {
          this.#log.error("the daemon refused an event; dropping it", {
            topic: item.topic,
            error: detail,
          });
          if (this.#queue[0] === item) this.#queue.shift();
          this.#dropped++;
          continue;
        }
        this.#log.debug("cannot forward an event; will retry", {
          topic: item.topic,
          error: detail,
          retry_ms: backoff,
        });
        await this.#sleep(backoff);
        backoff = Math.min(backoff * 2, this.#maxBackoff);
      }
    }
    if (this.#queue.length === 0) {
      const idle = this.#idle;
      this.#idle = [];
      for (const resolve of idle) resolve();
    }
  }
}
