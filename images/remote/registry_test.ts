/**
 * Pull and push against a real distribution registry (Debian's docker-registry) on 127.0.0.1,
 * over plain HTTP (the default for loopback hosts, as containerd).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { TainerdError } from "../../plugins/errdefs.ts";
import { LocalStore } from "../../plugins/content/local_store.ts";
import { digestOf } from "../../plugins/content/digest.ts";
import { fetchToWriter } from "./fetcher.ts";
import { MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_LAYER_GZIP } from "./media_types.ts";
import { Resolver } from "./resolver.ts";
import { blob, buildTestImage, pseudoRandom, readAll } from "./testdata/image.ts";
import { blobDataPath, type RunningRegistry, startRegistry } from "./testdata/registry.ts";

function isKind(kind: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, kind, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

async function withRegistry(fn: (registry: RunningRegistry) => Promise<void>): Promise<void> {
  const registry = await startRegistry();
  try {
    await fn(registry);
  } catch (err) {
    console.error(registry.logs());
    throw err;
  } finally {
    await registry.stop();
  }
}

const fast = { retry: { minDelayMs: 10, maxDelayMs: 50 } };

Deno.test("Pusher, Resolver and Fetcher round-trip an OCI image through a real registry", async () => {
  const image = await buildTestImage();
  await withRegistry(async (registry) => {
    const ref = `${registry.host}/test/app:v1`;
    const resolver = new Resolver(fast);
    try {
      // Nothing there yet.
      await assert.rejects(resolver.resolve(ref), isKind("NotFound", /not found/));

      const pusher = await resolver.pusher(ref);
      for (const b of image.blobs) {
        const tag = b === image.index ? true : undefined;
        const result = await pusher.push(b.desc, b.bytes, { tag });
        assert.equal(result.status, "pushed", b.desc.digest);
      }
      // A second push finds everything in place.
      for (const b of image.blobs) {
        const tag = b === image.index ? true : undefined;
        assert.equal((await pusher.push(b.desc, b.bytes, { tag })).status, "exists");
      }

      // Resolve by tag and by digest.
      const byTag = await resolver.resolve(ref);
      assert.equal(byTag.name, ref);
      assert.deepEqual(byTag.descriptor, {
        mediaType: MEDIA_TYPE_OCI_INDEX,
        digest: image.index.desc.digest,
        size: image.index.desc.size,
      });
      const digestRef = `${registry.host}/test/app@${image.index.desc.digest}`;
      const byDigest = await resolver.resolve(digestRef);
      assert.deepEqual(byDigest.descriptor, byTag.descriptor);
      // A manifest resolves by its digest too, with its own media type.
      const manifest = image.manifests[1];
      const child = await resolver.resolve(`${registry.host}/test/app@${manifest.desc.digest}`);
      assert.equal(child.descriptor.mediaType, manifest.desc.mediaType);
      assert.equal(child.descriptor.size, manifest.desc.size);

      // Fetch every blob, verified, and compare.
      const fetcher = await resolver.fetcher(byTag.name);
      for (const b of image.blobs) {
        const bytes = await readAll(await fetcher.fetch(b.desc));
        assert.deepEqual(bytes, b.bytes, b.desc.digest);
      }
      // The index round-trips with both platforms.
      const index = JSON.parse(
        new TextDecoder().decode(await readAll(await fetcher.fetch(byTag.descriptor))),
      );
      assert.deepEqual(
        index.manifests.map((m: { platform: unknown }) => m.platform),
        [{ os: "linux", architecture: "amd64" }, {
          os: "linux",
          architecture: "arm64",
          variant: "v8",
        }],
      );
      assert.deepEqual(
        index.manifests.map((m: { digest: string }) => m.digest),
        image.manifests.map((m) => m.desc.digest),
      );

      // A missing blob is NotFound.
      const missing = blob(MEDIA_TYPE_OCI_LAYER_GZIP, new TextEncoder().encode("not pushed"));
      await assert.rejects(fetcher.fetch(missing.desc), isKind("NotFound"));
      // A missing tag is NotFound.
      await assert.rejects(resolver.resolve(`${registry.host}/test/app:nope`), isKind("NotFound"));
    } finally {
      resolver.close();
    }
  });
});

Deno.test("Pusher uploads in PATCH chunks, streams large blobs and mounts across repositories", async () => {
  await withRegistry(async (registry) => {
    const resolver = new Resolver(fast);
    try {
      const big = blob("application/octet-stream", pseudoRandom(700 * 1024, 42));
      const pusher = await resolver.pusher(`${registry.host}/chunked/a:latest`);
      assert.equal(
        (await pusher.push(big.desc, big.bytes, { chunkSize: 256 * 1024 })).status,
        "pushed",
      );
      const fetched = await readAll(
        await (await resolver.fetcher(`${registry.host}/chunked/a:latest`)).fetch(big.desc),
      );
      assert.deepEqual(fetched, big.bytes);

      // A stream larger than the monolithic limit goes in one streamed PATCH.
      const other = blob("application/octet-stream", pseudoRandom(300 * 1024, 43));
      let opened = 0;
      const source = () => {
        opened++;
        let offset = 0;
        return new ReadableStream<Uint8Array>({
          pull(controller) {
            if (offset >= other.bytes.byteLength) return controller.close();
            controller.enqueue(other.bytes.slice(offset, offset + 50_000));
            offset += 50_000;
          },
        });
      };
      assert.equal(
        (await pusher.push(other.desc, source, { monolithicLimit: 1024 })).status,
        "pushed",
      );
      assert.equal(opened, 1);
      assert.equal(await pusher.exists(other.desc), true);

      // Mount into another repository of the same registry.
      const target = await resolver.pusher(`${registry.host}/chunked/b:latest`);
      assert.equal(await target.exists(big.desc), false);
      const mounted = await target.push(big.desc, big.bytes, { mountFrom: ["chunked/a"] });
      assert.equal(mounted.status, "mounted");
      assert.equal(await target.exists(big.desc), true);

      // Content that does not match its descriptor is refused before the upload completes.
      const liar = { ...big.desc, digest: digestOf("something else") };
      await assert.rejects(
        target.push(liar, big.bytes, { force: true }),
        isKind("InvalidArgument", /digest is sha256:/),
      );
      await assert.rejects(
        target.push({ ...other.desc, size: other.desc.size - 1 }, source, { force: true }),
        isKind("InvalidArgument", /more than/),
      );
      await assert.rejects(
        (await resolver.fetcher(`${registry.host}/chunked/b:latest`)).fetch({
          ...liar,
          size: big.desc.size,
        }),
        isKind("NotFound"),
      );
    } finally {
      resolver.close();
    }
  });
});

Deno.test("Fetcher resumes from an offset with a Range request and fetchToWriter commits into the content store", async () => {
  await withRegistry(async (registry) => {
    const resolver = new Resolver(fast);
    const root = await Deno.makeTempDir({ prefix: "tainerd-store-" });
    try {
      const data = blob("application/octet-stream", pseudoRandom(500 * 1024, 9));
      const ref = `${registry.host}/resume/x:1`;
      await (await resolver.pusher(ref)).push(data.desc, data.bytes);
      const fetcher = await resolver.fetcher(ref);

      const tail = await readAll(await fetcher.fetch(data.desc, { offset: 123_456 }));
      assert.deepEqual(tail, data.bytes.subarray(123_456));

      // An ingest holding the first 100 KiB is completed from there.
      const store = await LocalStore.open(join(root, "content"));
      const writer = await store.writer("fetch-1", {
        total: data.desc.size,
        expected: data.desc.digest,
      });
      await writer.write(data.bytes.subarray(0, 100 * 1024));
      assert.equal(writer.status().offset, 100 * 1024);
      await fetchToWriter(fetcher, data.desc, writer);
      assert.equal((await store.info(data.desc.digest)).size, data.desc.size);
    } finally {
      resolver.close();
      await Deno.remove(root, { recursive: true });
    }
  });
});

Deno.test("Fetcher refuses a corrupted blob from a real registry and nothing is committed", async () => {
  await withRegistry(async (registry) => {
    const resolver = new Resolver(fast);
    const root = await Deno.makeTempDir({ prefix: "tainerd-store-" });
    try {
      const data = blob("application/octet-stream", pseudoRandom(64 * 1024, 3));
      const ref = `${registry.host}/corrupt/x:1`;
      await (await resolver.pusher(ref)).push(data.desc, data.bytes);
      // Flip one byte in the registry's storage: same size, wrong content.
      const path = blobDataPath(registry, data.desc.digest);
      const stored = await Deno.readFile(path);
      stored[1000] ^= 0xff;
      await Deno.writeFile(path, stored);

      const fetcher = await resolver.fetcher(ref);
      await assert.rejects(
        readAll(await fetcher.fetch(data.desc)),
        isKind("FailedPrecondition", /digest mismatch/),
      );
      const store = await LocalStore.open(join(root, "content"));
      const writer = await store.writer("corrupt-1", {
        total: data.desc.size,
        expected: data.desc.digest,
      });
      await assert.rejects(
        fetchToWriter(fetcher, data.desc, writer),
        isKind("FailedPrecondition", /digest mismatch/),
      );
      await writer.close();
      await assert.rejects(store.info(data.desc.digest), isKind("NotFound"));
    } finally {
      resolver.close();
      await Deno.remove(root, { recursive: true });
    }
  });
});
