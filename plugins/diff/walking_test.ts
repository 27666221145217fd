import assert from "node:assert/strict";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { type ErrorKind, TainerdError } from "../errdefs.ts";
import { digestOf } from "../content/digest.ts";
import { LocalStore } from "../content/local_store.ts";
import { MetadataContentStore } from "../metadata/content.ts";
import { MetadataDB } from "../metadata/db.ts";
import { GarbageCollector } from "../metadata/gc.ts";
import { LeaseManager, type Scope } from "../metadata/leases.ts";
import { NamespaceStore } from "../namespaces/store.ts";
import { withTempDir } from "../../snapshots/test_helpers.ts";
import type { Mount } from "../../sys/mount.ts";
import { DiffService, UNCOMPRESSED_LABEL, WalkingDiffer } from "./walking.ts";

interface Fixture {
  dir: string;
  cs: MetadataContentStore;
  differ: DiffService;
}

async function withDiffer(fn: (f: Fixture) => Promise<void>): Promise<void> {
  await withTempDir(async (dir) => {
    const db = new MetadataDB(join(dir, "meta.db"));
    try {
      const gc = new GarbageCollector(db);
      const namespaces = new NamespaceStore(db);
      const ensure = (ns: string) => namespaces.ensure(ns);
      const cs = new MetadataContentStore(db, await LocalStore.open(join(dir, "content")), {
        gc,
        leases: new LeaseManager(db, gc, ensure),
        ensureNamespace: ensure,
      });
      await fn({ dir, cs, differ: new DiffService([new WalkingDiffer(() => cs)]) });
    } finally {
      db.close();
    }
  });
}

function kind(expected: ErrorKind): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, expected, `wrong kind for: ${err.message}`);
    return true;
  };
}

const scope = (namespace: string): Scope => ({ namespace });

const bind = (source: string, ro = false): Mount[] => [
  { type: "bind", source, options: [ro ? "ro" : "rw", "rbind"] },
];

function tarOf(dir: string): Uint8Array {
  const out = new Deno.Command("tar", {
    args: ["--numeric-owner", "-C", dir, "-cf", "-", "."],
    stdout: "piped",
  }).outputSync();
  assert.ok(out.success);
  return out.stdout;
}

async function put(cs: MetadataContentStore, ns: string, bytes: Uint8Array): Promise<string> {
  const w = await cs.writer(scope(ns), `ref-${digestOf(bytes)}`, { total: bytes.length });
  await w.write(bytes);
  return await w.commit(bytes.length, digestOf(bytes));
}

Deno.test("WalkingDiffer.apply() applies a namespace's layer and returns its diff ID", () =>
  withDiffer(async ({ dir, cs, differ }) => {
    const src = join(dir, "src");
    Deno.mkdirSync(join(src, "etc"), { recursive: true });
    Deno.writeTextFileSync(join(src, "etc", "motd"), "hello\n");
    const tar = tarOf(src);
    const gz = new Uint8Array(gzipSync(tar));
    const digest = await put(cs, "a", gz);
    const target = join(dir, "target");
    Deno.mkdirSync(target);
    const applied = await differ.apply(
      scope("a"),
      { mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest, size: gz.length },
      bind(target),
    );
    assert.deepEqual(applied, {
      mediaType: "application/vnd.oci.image.layer.v1.tar",
      digest: digestOf(tar),
      size: tar.length,
    });
    assert.equal(Deno.readTextFileSync(join(target, "etc", "motd")), "hello\n");
    // Another namespace does not see the blob.
    await assert.rejects(
      differ.apply(scope("b"), { mediaType: "", digest, size: gz.length }, bind(target)),
      kind("NotFound"),
    );
    await assert.rejects(
      differ.apply(
        scope("a"),
        { mediaType: "application/vnd.oci.image.layer.v1.tar+encrypted", digest, size: 1 },
        bind(target),
      ),
      kind("NotImplemented"),
    );
  }));

Deno.test("WalkingDiffer.compare() writes the layer with its ref and labels", () =>
  withDiffer(async ({ dir, cs, differ }) => {
    const lower = join(dir, "lower");
    const upper = join(dir, "upper");
    Deno.mkdirSync(lower);
    Deno.mkdirSync(join(upper, "new"), { recursive: true });
    Deno.writeTextFileSync(join(upper, "new", "file"), "data");
    const desc = await differ.compare(scope("a"), bind(lower, true), bind(upper, true), {
      ref: "my-diff",
      labels: { team: "x" },
    });
    assert.equal(desc.mediaType, "application/vnd.oci.image.layer.v1.tar+gzip");
    const info = cs.info("a", desc.digest);
    assert.equal(info.size, desc.size);
    assert.equal(info.labels.team, "x");
    const diffID = info.labels[UNCOMPRESSED_LABEL];
    assert.match(diffID, /^sha256:[0-9a-f]{64}$/);
    assert.deepEqual(await cs.listStatuses("a"), [], "the ingest is committed");
    // Applying the diff onto the lower side reproduces the upper side.
    const out = join(dir, "out");
    Deno.mkdirSync(out);
    const applied = await differ.apply(scope("a"), desc, bind(out));
    assert.equal(applied.digest, diffID);
    assert.equal(Deno.readTextFileSync(join(out, "new", "file")), "data");
    // The same diff again: the blob exists; the label is set when it was missing.
    cs.update("a", { digest: desc.digest, labels: {} }, ["labels"]);
    const again = await differ.compare(scope("a"), bind(lower, true), bind(upper, true));
    assert.equal(again.digest, desc.digest);
    assert.equal(cs.info("a", desc.digest).labels[UNCOMPRESSED_LABEL], diffID);
    // Uncompressed: the digest is the diff ID, no label needed.
    const plain = await differ.compare(scope("a"), bind(lower, true), bind(upper, true), {
      mediaType: "application/vnd.oci.image.layer.v1.tar",
    });
    assert.equal(plain.digest, diffID);
    assert.equal(cs.info("a", plain.digest).labels[UNCOMPRESSED_LABEL], undefined);
    await assert.rejects(
      differ.compare(scope("a"), bind(lower, true), bind(upper, true), {
        mediaType: "application/x-bzip2",
      }),
      kind("NotImplemented"),
    );
    assert.deepEqual(await cs.listStatuses("a"), [], "no ingest is left behind");
  }));
