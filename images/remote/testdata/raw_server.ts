/**
 * Test helper: a raw HTTP/1.1 server on 127.0.0.1 (one request per connection) whose handler
 * writes bytes to the socket itself, so tests can send short bodies, drop connections midway or
 * lie about lengths — things `Deno.serve` will not do.
 *
 * @module
 */

/** A parsed request head. */
export interface RawRequest {
  method: string;
  path: string;
  headers: Headers;
}

/** What a handler gets: the request and a way to write to (and close) the connection. */
export interface RawExchange {
  request: RawRequest;
  /** Writes text or bytes. */
  write(data: string | Uint8Array): Promise<void>;
  /** Writes a status line, headers and a body, then closes. */
  respond(
    status: number,
    headers: Record<string, string>,
    body?: string | Uint8Array,
  ): Promise<void>;
}

/** A running raw server. */
export interface RawServer {
  port: number;
  host: string;
  url: string;
  requests: RawRequest[];
  stop(): Promise<void>;
}

const encoder = new TextEncoder();

async function readHead(conn: Deno.Conn): Promise<RawRequest | undefined> {
  const buffer = new Uint8Array(64 * 1024);
  let filled = 0;
  for (;;) {
    const n = await conn.read(buffer.subarray(filled));
    if (n === null) return undefined;
    filled += n;
    const text = new TextDecoder().decode(buffer.subarray(0, filled));
    const end = text.indexOf("\r\n\r\n");
    if (end >= 0) {
      const [line, ...rest] = text.slice(0, end).split("\r\n");
      const [method, path] = line.split(" ");
      const headers = new Headers();
      for (const h of rest) {
        const i = h.indexOf(":");
        if (i > 0) headers.append(h.slice(0, i).trim(), h.slice(i + 1).trim());
      }
      return { method, path, headers };
    }
  }
}

/** Starts a raw server; the handler must close nothing itself (the server closes after it). */
export function startRawServer(handler: (exchange: RawExchange) => Promise<void>): RawServer {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const requests: RawRequest[] = [];
  const open = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  const serve = async (conn: Deno.Conn) => {
    open.add(conn);
    try {
      const request = await readHead(conn);
      if (!request) return;
      requests.push(request);
      const write = async (data: string | Uint8Array) => {
        const bytes = typeof data === "string" ? encoder.encode(data) : data;
        let offset = 0;
        while (offset < bytes.byteLength) offset += await conn.write(bytes.subarray(offset));
      };
      await handler({
        request,
        write,
        async respond(status, headers, body) {
          const bytes = typeof body === "string" ? encoder.encode(body) : body ?? new Uint8Array();
          const all = {
            "content-length": String(bytes.byteLength),
            connection: "close",
            ...headers,
          };
          let head = `HTTP/1.1 ${status} X\r\n`;
          for (const [k, v] of Object.entries(all)) head += `${k}: ${v}\r\n`;
          await write(head + "\r\n");
          if (request.method !== "HEAD") await write(bytes);
        },
      });
    } catch {
      // The client went away; nothing to do.
    } finally {
      open.delete(conn);
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
  };
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        const task = serve(conn);
        tasks.add(task);
        task.finally(() => tasks.delete(task));
      }
    } catch {
      // Listener closed.
    }
  })();
  return {
    port,
    host: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    requests,
    async stop() {
      listener.close();
      await accepting;
      for (const conn of open) {
        try {
          conn.close();
        } catch {
          // Already closed.
        }
      }
      await Promise.all([...tasks]);
    },
  };
}
