/**
 * The fetcher against misbehaving servers (raw sockets): a connection dropped mid-blob is
 * resumed with a Range request, a server ignoring Range is skipped ahead, wrong bytes fail the
 * stream before it ends, and 503s are retried.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { TainerdError } from "../../plugins/errdefs.ts";
import { Digester } from "../../plugins/content/digest.ts";
import { LocalStore } from "../../plugins/content/local_store.ts";
import { fetchToWriter } from "./fetcher.ts";
import { Resolver } from "./resolver.ts";
import { blob, pseudoRandom, readAll } from "./testdata/image.ts";
import { type RawExchange, startRawServer } from "./testdata/raw_server.ts";

function isKind(kind: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, kind, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

const DATA = blob("application/octet-stream", pseudoRandom(256 * 1024, 5));
const fast = { retry: { minDelayMs: 5, maxDelayMs: 20 } };

function rangeStart(ex: RawExchange): number {
  const m = /^bytes=(\d+)-$/.exec(ex.request.headers.get("range") ?? "");
  return m ? Number(m[1]) : 0;
}

/** Serves `body` for the blob; `plan(n)` decides what the n-th request (from 1) gets. */
function blobServer(plan: (n: number, ex: RawExchange) => Promise<void>) {
  let n = 0;
  return startRawServer(async (ex) => {
    if (!ex.request.path.startsWith("/v2/test/blob/blobs/")) {
      await ex.respond(404, {}, "");
      return;
    }
    await plan(++n, ex);
  });
}

async function withFetcher<T>(
  server: { host: string; stop(): Promise<void> },
  fn: (fetcher: Awaited<ReturnType<Resolver["fetcher"]>>) => Promise<T>,
  transport: "fetch" | "node" = "fetch",
): Promise<T> {
  const resolver = new Resolver({ ...fast, transport });
  try {
    return await fn(await resolver.fetcher(`${server.host}/test/blob:latest`));
  } finally {
    resolver.close();
    await server.stop();
  }
}

for (const transport of ["fetch", "node"] as const) {
  Deno.test(`Fetcher resumes a dropped download with Range (${transport} transport)`, async () => {
    const server = blobServer(async (n, ex) => {
      const start = rangeStart(ex);
      const rest = DATA.bytes.subarray(start);
      if (n === 1) {
        // Promise the whole blob, send 100 KiB, drop the connection.
        await ex.write(`HTTP/1.1 200 OK\r\ncontent-length: ${rest.byteLength}\r\n\r\n`);
        await ex.write(rest.subarray(0, 100 * 1024));
        return;
      }
      await ex.respond(206, {
        "content-range": `bytes ${start}-${DATA.bytes.byteLength - 1}/${DATA.bytes.byteLength}`,
      }, rest);
    });
    const requests = server.requests;
    await withFetcher(server, async (fetcher) => {
      const bytes = await readAll(await fetcher.fetch(DATA.desc));
      assert.deepEqual(bytes, DATA.bytes);
      assert.equal(requests.length, 2);
      assert.equal(requests[0].headers.get("range"), null);
      assert.equal(requests[1].headers.get("range"), `bytes=${100 * 1024}-`);
    }, transport);
  });
}

Deno.test("Fetcher skips ahead when a server ignores Range and answers 200", async () => {
  const server = blobServer(async (n, ex) => {
    if (n === 1) {
      await ex.write(`HTTP/1.1 200 OK\r\ncontent-length: ${DATA.bytes.byteLength}\r\n\r\n`);
      await ex.write(DATA.bytes.subarray(0, 70_000));
      return;
    }
    await ex.respond(200, {}, DATA.bytes);
  });
  await withFetcher(server, async (fetcher) => {
    assert.deepEqual(await readAll(await fetcher.fetch(DATA.desc)), DATA.bytes);
  });
});

Deno.test("Fetcher fails the stream on wrong bytes and fetchToWriter commits nothing", async () => {
  const corrupt = DATA.bytes.slice();
  corrupt[corrupt.byteLength - 1] ^= 1;
  const server = blobServer(async (_n, ex) => {
    await ex.respond(200, {}, corrupt);
  });
  const root = await Deno.makeTempDir({ prefix: "tainerd-store-" });
  try {
    await withFetcher(server, async (fetcher) => {
      const reader = (await fetcher.fetch(DATA.desc)).getReader();
      let received = 0;
      const error = await (async () => {
        for (;;) {
          try {
            const { done, value } = await reader.read();
            if (done) return undefined;
            received += value.byteLength;
          } catch (err) {
            return err;
          }
        }
      })();
      // Every byte arrived, yet the stream errors instead of ending: nothing may commit.
      assert.equal(received, DATA.desc.size);
      assert.ok(
        isKind(
          "FailedPrecondition",
          /digest mismatch: the registry sent content with digest sha256:/,
        )(error),
      );

      const store = await LocalStore.open(join(root, "content"));
      const writer = await store.writer("w", { total: DATA.desc.size, expected: DATA.desc.digest });
      await assert.rejects(fetchToWriter(fetcher, DATA.desc, writer), isKind("FailedPrecondition"));
      await writer.close();
      await assert.rejects(store.info(DATA.desc.digest), isKind("NotFound"));
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("Fetcher refuses more bytes than the descriptor's size", async () => {
  const server = blobServer(async (_n, ex) => {
    const longer = new Uint8Array(DATA.bytes.byteLength + 10);
    longer.set(DATA.bytes);
    await ex.respond(200, {}, longer);
  });
  await withFetcher(server, async (fetcher) => {
    await assert.rejects(
      readAll(await fetcher.fetch(DATA.desc)),
      isKind("FailedPrecondition", /size mismatch: the registry sent more than 262144 bytes/),
    );
  });
});

Deno.test("Fetcher gives up after repeated drops without progress", async () => {
  const server = blobServer(async (_n, ex) => {
    const start = rangeStart(ex);
    await ex.write(
      `HTTP/1.1 ${start ? 206 : 200} X\r\ncontent-length: ${DATA.bytes.byteLength - start}\r\n` +
        (start
          ? `content-range: bytes ${start}-${
            DATA.bytes.byteLength - 1
          }/${DATA.bytes.byteLength}\r\n`
          : "") +
        "\r\n",
    );
    if (start === 0) await ex.write(DATA.bytes.subarray(0, 1000));
  });
  const requests = server.requests;
  await withFetcher(server, async (fetcher) => {
    await assert.rejects(
      readAll(await fetcher.fetch(DATA.desc, { maxResumes: 2 })),
      isKind("Unavailable", /broke off at byte 1000 of 262144 3 times without progress/),
    );
    assert.equal(requests.length, 3);
  });
});

Deno.test("Fetcher retries 503 and rejects an unexpected Content-Range", async () => {
  const server = blobServer(async (n, ex) => {
    if (n <= 2) {
      await ex.respond(503, { "retry-after": "0" }, "busy");
      return;
    }
    if (rangeStart(ex) > 0) {
      await ex.respond(206, { "content-range": "bytes 0-9/262144" }, DATA.bytes.subarray(0, 10));
      return;
    }
    await ex.respond(200, {}, DATA.bytes);
  });
  await withFetcher(server, async (fetcher) => {
    assert.deepEqual(await readAll(await fetcher.fetch(DATA.desc)), DATA.bytes);
    await assert.rejects(
      fetcher.fetch(DATA.desc, { offset: 5 }),
      isKind("Unavailable", /unexpected content range/),
    );
  });
});

Deno.test("Fetcher verifies a resumed stream with a primed digester, and checks offsets", async () => {
  const server = blobServer(async (_n, ex) => {
    const start = rangeStart(ex);
    await ex.respond(206, {
      "content-range": `bytes ${start}-${DATA.bytes.byteLength - 1}/${DATA.bytes.byteLength}`,
    }, DATA.bytes.subarray(start));
  });
  await withFetcher(server, async (fetcher) => {
    const digester = new Digester().update(DATA.bytes.subarray(0, 1000));
    const tail = await readAll(await fetcher.fetch(DATA.desc, { offset: 1000, digester }));
    assert.deepEqual(tail, DATA.bytes.subarray(1000));
    const wrong = new Digester().update(new Uint8Array(1000));
    await assert.rejects(
      readAll(await fetcher.fetch(DATA.desc, { offset: 1000, digester: wrong })),
      isKind("FailedPrecondition", /digest mismatch/),
    );
    await assert.rejects(
      fetcher.fetch(DATA.desc, { offset: DATA.desc.size + 1 }),
      isKind("OutOfRange"),
    );
    await assert.rejects(
      fetcher.fetch(DATA.desc, { offset: 10, digester }),
      isKind("InvalidArgument"),
    );
  });
});

Deno.test("fetchToWriter() starts over when a resumed ingest fails verification", async () => {
  const server = blobServer(async (_n, ex) => {
    const start = rangeStart(ex);
    await ex.respond(
      start ? 206 : 200,
      start
        ? {
          "content-range": `bytes ${start}-${DATA.bytes.byteLength - 1}/${DATA.bytes.byteLength}`,
        }
        : {},
      DATA.bytes.subarray(start),
    );
  });
  const root = await Deno.makeTempDir({ prefix: "tainerd-store-" });
  try {
    await withFetcher(server, async (fetcher) => {
      const store = await LocalStore.open(join(root, "content"));
      let writer = await store.writer("resume", {
        total: DATA.desc.size,
        expected: DATA.desc.digest,
      });
      await writer.write(new Uint8Array(5000)); // a bad prefix from an earlier attempt
      let restarts = 0;
      await fetchToWriter(fetcher, DATA.desc, writer, {
        restart: async () => {
          restarts++;
          await writer.close();
          await store.abort("resume");
          writer = await store.writer("resume", {
            total: DATA.desc.size,
            expected: DATA.desc.digest,
          });
          return writer;
        },
      });
      assert.equal(restarts, 1);
      assert.equal((await store.info(DATA.desc.digest)).size, DATA.desc.size);
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
