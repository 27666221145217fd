import assert from "node:assert/strict";
import { digestOf } from "../plugins/content/digest.ts";
import { isKind } from "../plugins/errdefs.ts";
import {
  type BlobProvider,
  chainId,
  chainIds,
  childGcLabels,
  childrenOf,
  type Descriptor,
  filterChildren,
  platformsOf,
  refKey,
  resolveManifest,
  walkImage,
} from "./image.ts";
import { allPlatforms, onlyPlatform } from "./platforms.ts";
import {
  MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED,
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_OCI_LAYER_GZIP,
  MEDIA_TYPE_OCI_MANIFEST,
} from "./remote/media_types.ts";
import { notFound } from "../plugins/errdefs.ts";

const enc = new TextEncoder();

function blob(mediaType: string, value: unknown, extra: Partial<Descriptor> = {}) {
  const bytes = typeof value === "string" ? enc.encode(value) : enc.encode(JSON.stringify(value));
  return { desc: { mediaType, digest: digestOf(bytes), size: bytes.byteLength, ...extra }, bytes };
}

/** A two-platform image in memory. */
function image() {
  const store = new Map<string, Uint8Array>();
  const put = <T extends { desc: Descriptor; bytes: Uint8Array }>(b: T) => {
    store.set(b.desc.digest, b.bytes);
    return b;
  };
  const mk = (arch: string) => {
    const layer = put(blob(MEDIA_TYPE_OCI_LAYER_GZIP, `layer ${arch}`));
    const config = put(blob(MEDIA_TYPE_OCI_CONFIG, {
      os: "linux",
      architecture: arch,
      rootfs: { type: "layers", diff_ids: [digestOf(`diff ${arch}`)] },
    }));
    const manifest = put(blob(MEDIA_TYPE_OCI_MANIFEST, {
      schemaVersion: 2,
      config: config.desc,
      layers: [layer.desc],
    }));
    return { layer, config, manifest };
  };
  const amd = mk("amd64");
  const arm = mk("arm64");
  const index = put(blob(MEDIA_TYPE_OCI_INDEX, {
    schemaVersion: 2,
    manifests: [
      { ...amd.manifest.desc, platform: { os: "linux", architecture: "amd64" } },
      { ...arm.manifest.desc, platform: { os: "linux", architecture: "arm64", variant: "v8" } },
    ],
  }));
  const provider: BlobProvider = {
    readBlob(desc) {
      const b = store.get(desc.digest);
      return b ? Promise.resolve(b) : Promise.reject(notFound(`${desc.digest} not found`));
    },
  };
  return { amd, arm, index, provider, store };
}

Deno.test("chainIds() follows the OCI definition", () => {
  const a = digestOf("a"), b = digestOf("b"), c = digestOf("c");
  const ab = digestOf(`${a} ${b}`);
  assert.deepEqual(chainIds([a, b, c]), [a, ab, digestOf(`${ab} ${c}`)]);
  assert.equal(chainId([a]), a);
  assert.equal(chainId([]), "");
});

Deno.test("childGcLabels() numbers manifests and layers, names the config", () => {
  const { amd, arm, index } = image();
  assert.deepEqual(childGcLabels(childrenOf(index.desc, index.bytes)), {
    "containerd.io/gc.ref.content.m.0": amd.manifest.desc.digest,
    "containerd.io/gc.ref.content.m.1": arm.manifest.desc.digest,
  });
  assert.deepEqual(childGcLabels(childrenOf(amd.manifest.desc, amd.manifest.bytes)), {
    "containerd.io/gc.ref.content.config": amd.config.desc.digest,
    "containerd.io/gc.ref.content.l.0": amd.layer.desc.digest,
  });
  assert.deepEqual(childGcLabels([{ mediaType: "x/y", digest: "sha256:1", size: 1 }]), {
    "containerd.io/gc.ref.content.0": "sha256:1",
  });
  assert.equal(refKey(amd.layer.desc), `layer-${amd.layer.desc.digest}`);
  assert.equal(refKey(index.desc), `index-${index.desc.digest}`);
});

Deno.test("filterChildren() picks platforms and limits manifests", () => {
  const { amd, index } = image();
  const children = childrenOf(index.desc, index.bytes);
  const m = onlyPlatform({ os: "linux", architecture: "amd64" });
  assert.deepEqual(filterChildren(index.desc, children, m, 1).map((d) => d.digest), [
    amd.manifest.desc.digest,
  ]);
  assert.equal(filterChildren(index.desc, children, allPlatforms).length, 2);
  assert.throws(
    () =>
      filterChildren(index.desc, children, onlyPlatform({ os: "linux", architecture: "s390x" }), 1),
    (e: Error) => isKind(e, "NotFound"),
  );
});

Deno.test("resolveManifest(), platformsOf() and walkImage() read an image", async () => {
  const { amd, arm, index, provider, store } = image();
  const r = await resolveManifest(
    provider,
    index.desc,
    onlyPlatform({ os: "linux", architecture: "arm64" }),
  );
  assert.equal(r.desc.digest, arm.manifest.desc.digest);
  assert.deepEqual(r.platform, { os: "linux", architecture: "arm64" });
  // A lone manifest is judged by its config.
  const lone = await resolveManifest(
    provider,
    amd.manifest.desc,
    onlyPlatform({ os: "linux", architecture: "amd64" }),
  );
  assert.equal(lone.config.architecture, "amd64");
  await assert.rejects(
    resolveManifest(
      provider,
      amd.manifest.desc,
      onlyPlatform({ os: "linux", architecture: "arm64" }),
    ),
    (e: Error) => isKind(e, "NotFound"),
  );
  assert.deepEqual(await platformsOf(provider, index.desc), [
    { os: "linux", architecture: "amd64" },
    { os: "linux", architecture: "arm64", variant: "v8" },
  ]);
  const walked = await walkImage(
    provider,
    index.desc,
    onlyPlatform({ os: "linux", architecture: "amd64" }),
  );
  assert.deepEqual(walked.map((d) => d.digest), [
    index.desc.digest,
    amd.manifest.desc.digest,
    amd.config.desc.digest,
    amd.layer.desc.digest,
  ]);
  store.delete(arm.manifest.desc.digest);
  const partial = await walkImage(provider, index.desc, allPlatforms, { skipMissing: true });
  assert.equal(partial.length, 5);
});

Deno.test("childrenOf() rejects schema 1 and malformed manifests", () => {
  const s1 = blob(MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED, { schemaVersion: 1 });
  assert.throws(() => childrenOf(s1.desc, s1.bytes), (e: Error) => isKind(e, "NotImplemented"));
  const bad = blob(MEDIA_TYPE_OCI_MANIFEST, "{not json");
  assert.throws(() => childrenOf(bad.desc, bad.bytes), (e: Error) => isKind(e, "InvalidArgument"));
  const noConfig = blob(MEDIA_TYPE_OCI_MANIFEST, { schemaVersion: 2, layers: [] });
  assert.throws(
    () => childrenOf(noConfig.desc, noConfig.bytes),
    (e: Error) => isKind(e, "InvalidArgument"),
  );
  const posing = blob(MEDIA_TYPE_OCI_MANIFEST, { mediaType: MEDIA_TYPE_OCI_INDEX, manifests: [] });
  assert.throws(
    () => childrenOf(posing.desc, posing.bytes),
    (e: Error) => isKind(e, "InvalidArgument"),
  );
});
