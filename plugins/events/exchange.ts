/**
 * The event exchange, as containerd's `events/exchange`: publishers hand it an event for a
 * namespace and topic; subscribers receive envelopes (timestamp, namespace, topic, event as
 * an Any) through bounded queues. Events are typed by their protobuf message name, as
 * containerd's typeurl does (`containerd.events.TaskExit`).
 *
 * @module
 */

import { type DescMessage, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { invalidArgument } from "../errdefs.ts";
import { validateIdentifier } from "../identifiers.ts";
import type { Logger } from "../../log.ts";

/** An event as it travels: the message's type URL and its protobuf bytes. */
export interface EventAny {
  typeUrl: string;
  value: Uint8Array;
}

/** One published event. */
export interface Envelope {
  timestamp: Date;
  namespace: string;
  topic: string;
  event: EventAny;
}

/** Decides which envelopes a subscriber receives. */
export type EnvelopeFilter = (e: Envelope) => boolean;

const TOPIC_RE = /^\/[A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+)*$/;

/** Checks a topic: `/`-separated identifiers, starting with `/`. */
export function validateTopic(topic: string): void {
  if (topic === "") throw invalidArgument("The event topic must not be empty");
  if (!TOPIC_RE.test(topic)) {
    throw invalidArgument(
      `The event topic ${JSON.stringify(topic)} is invalid: it must be "/"-separated names`,
    );
  }
}

/** Packs a message as an event. */
export function eventOf<D extends DescMessage>(schema: D, msg: MessageShape<D>): EventAny {
  return { typeUrl: schema.typeName, value: toBinary(schema, msg) };
}

interface Subscriber {
  filter: EnvelopeFilter;
  queue: Envelope[];
  wake?: () => void;
  closed: boolean;
  dropped: number;
}

/** How many envelopes a slow subscriber may have pending before older ones are dropped. */
const MAX_QUEUE = 4096;

/** Fans events out to subscribers. */
export class Exchange {
  readonly #subs = new Set<Subscriber>();
  readonly #log: Logger;

  constructor(log: Logger) {
    this.#log = log;
  }

  /** Publishes an event built from a message. */
  publish<D extends DescMessage>(
    namespace: string,
    topic: string,
    schema: D,
    msg: MessageShape<D>,
  ): void {
    this.forward({ timestamp: new Date(), namespace, topic, event: eventOf(schema, msg) });
  }

  /** Publishes an envelope as is (events forwarded by shims keep their timestamp). */
  forward(e: Envelope): void {
    validateIdentifier(e.namespace, "namespace");
    validateTopic(e.topic);
    this.#log.debug("event published", { namespace: e.namespace, topic: e.topic });
    for (const s of this.#subs) {
      if (s.closed || !s.filter(e)) continue;
      if (s.queue.length >= MAX_QUEUE) {
        s.queue.shift();
        s.dropped++;
        if (s.dropped === 1 || s.dropped % 1000 === 0) {
          this.#log.warn("slow event subscriber: dropping events", { dropped: s.dropped });
        }
      }
      s.queue.push(e);
      s.wake?.();
    }
  }

  /** The number of live subscribers. */
  get subscribers(): number {
    return this.#subs.size;
  }

  /** Receives matching envelopes until `signal` aborts or the consumer stops. */
  async *subscribe(filter: EnvelopeFilter, signal?: AbortSignal): AsyncGenerator<Envelope> {
    const sub: Subscriber = { filter, queue: [], closed: false, dropped: 0 };
    this.#subs.add(sub);
    const onAbort = () => {
      sub.closed = true;
      sub.wake?.();
    };
    signal?.addEventListener("abort", onAbort);
    try {
      while (!sub.closed) {
        const next = sub.queue.shift();
        if (next) {
          yield next;
          continue;
        }
        await new Promise<void>((resolve) => (sub.wake = resolve));
        sub.wake = undefined;
      }
    } finally {
      sub.closed = true;
      signal?.removeEventListener("abort", onAbort);
      this.#subs.delete(sub);
    }
  }
}
