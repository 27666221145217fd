/**
 * Test helper: a small runnable multi-platform OCI image — a busybox rootfs layer for the host
 * platform plus a dummy linux/arm64 (or amd64) manifest — built from scratch and pushed to
 * a registry with `images/remote`'s pusher.
 *
 * @module
 */

import { gzipSync } from "node:zlib";
import { join } from "node:path";
import { busyboxRootfs } from "../../tests/fixtures.ts";
import { digestOf } from "../../plugins/content/digest.ts";
import { hostPlatform, type Platform } from "../platforms.ts";
import type { Descriptor } from "../remote/descriptor.ts";
import {
  MEDIA_TYPE_DOCKER_CONFIG,
  MEDIA_TYPE_DOCKER_LAYER_GZIP,
  MEDIA_TYPE_DOCKER_MANIFEST,
  MEDIA_TYPE_DOCKER_MANIFEST_LIST,
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_OCI_LAYER_GZIP,
  MEDIA_TYPE_OCI_MANIFEST,
} from "../remote/media_types.ts";
import { Resolver } from "../remote/resolver.ts";
import { blob, pseudoRandom, tarDirectory, type TestBlob } from "../remote/testdata/image.ts";
import { type RunningRegistry, startRegistry } from "../remote/testdata/registry.ts";
import type { TainerdClient } from "../../client/client.ts";

export { blob, pseudoRandom, tarDirectory, type TestBlob };

/** A built image: its blobs (children first, root last) and handy parts. */
export interface BuiltImage {
  root: TestBlob;
  /** The host platform's manifest (bare descriptor). */
  manifest: TestBlob;
  config: TestBlob;
  layers: TestBlob[];
  /** Diff IDs of the host manifest's layers. */
  diffIds: string[];
  /** Every blob, children before parents, the root last. */
  blobs: TestBlob[];
  platforms: Platform[];
}

const encoder = new TextEncoder();

/** Options of {@link buildBusyboxImage}. */
export interface BuildOptions {
  /** Docker schema 2 media types instead of OCI. */
  docker?: boolean;
  /** Add a layer of this many incompressible bytes (`/data/blob`). */
  extraBytes?: number;
  /** A single manifest, no index. */
  single?: boolean;
  /** Text written to `/etc/motd` (varies the image). */
  motd?: string;
  /** Seed of the extra data (varies the image). */
  seed?: number;
}

/**
 * Builds the image: for the host platform a busybox layer (plus optional data layer); for a
 * second platform a dummy layer; an index over both.
 */
export async function buildBusyboxImage(opts: BuildOptions = {}): Promise<BuiltImage> {
  const host = hostPlatform();
  const other: Platform = host.architecture === "arm64"
    ? { os: "linux", architecture: "amd64" }
    : { os: "linux", architecture: "arm64", variant: "v8" };
  const types = opts.docker
    ? {
      layer: MEDIA_TYPE_DOCKER_LAYER_GZIP,
      config: MEDIA_TYPE_DOCKER_CONFIG,
      manifest: MEDIA_TYPE_DOCKER_MANIFEST,
      index: MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    }
    : {
      layer: MEDIA_TYPE_OCI_LAYER_GZIP,
      config: MEDIA_TYPE_OCI_CONFIG,
      manifest: MEDIA_TYPE_OCI_MANIFEST,
      index: MEDIA_TYPE_OCI_INDEX,
    };
  const dir = await Deno.makeTempDir({ prefix: "tainerd-image-" });
  try {
    const rootfs = await busyboxRootfs(dir);
    await Deno.writeTextFile(join(rootfs, "etc", "motd"), opts.motd ?? "welcome to tainerd\n");
    const tars = [await tarDirectory(rootfs)];
    if (opts.extraBytes) {
      const d = join(dir, "extra");
      await Deno.mkdir(join(d, "data"), { recursive: true });
      await Deno.writeFile(join(d, "data", "blob"), pseudoRandom(opts.extraBytes, opts.seed ?? 42));
      tars.push(await tarDirectory(d));
    }
    const layers = tars.map((t) => blob(types.layer, gzipSync(t, { level: 1 })));
    const diffIds = tars.map((t) => digestOf(t));
    const config = blob(
      types.config,
      encoder.encode(JSON.stringify({
        architecture: host.architecture,
        os: host.os,
        ...(host.variant ? { variant: host.variant } : {}),
        config: {
          Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
          Cmd: ["/bin/sh"],
          Labels: { "org.example.test": "busybox" },
        },
        rootfs: { type: "layers", diff_ids: diffIds },
      })),
    );
    const manifest = blob(
      types.manifest,
      encoder.encode(JSON.stringify({
        schemaVersion: 2,
        mediaType: types.manifest,
        config: config.desc,
        layers: layers.map((l) => l.desc),
      })),
    );
    if (opts.single) {
      return {
        root: manifest,
        manifest,
        config,
        layers,
        diffIds,
        blobs: [...layers, config, manifest],
        platforms: [host],
      };
    }
    // The other platform: a tiny layer of its own.
    const otherTar = encoder.encode("not a real tar, never unpacked on this host\n");
    const otherLayer = blob(types.layer, gzipSync(otherTar));
    const otherConfig = blob(
      types.config,
      encoder.encode(JSON.stringify({
        architecture: other.architecture,
        os: other.os,
        ...(other.variant ? { variant: other.variant } : {}),
        config: { Cmd: ["/bin/sh"] },
        rootfs: { type: "layers", diff_ids: [digestOf(otherTar)] },
      })),
    );
    const otherManifest = blob(
      types.manifest,
      encoder.encode(JSON.stringify({
        schemaVersion: 2,
        mediaType: types.manifest,
        config: otherConfig.desc,
        layers: [otherLayer.desc],
      })),
    );
    const index = blob(
      types.index,
      encoder.encode(JSON.stringify({
        schemaVersion: 2,
        mediaType: types.index,
        manifests: [
          { ...manifest.desc, platform: host },
          { ...otherManifest.desc, platform: other },
        ],
      })),
    );
    return {
      root: index,
      manifest,
      config,
      layers,
      diffIds,
      blobs: [...layers, config, manifest, otherLayer, otherConfig, otherManifest, index],
      platforms: [host, other],
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Pushes a built image to `ref` (plain HTTP), the root under the reference's tag. */
export async function pushBuiltImage(img: BuiltImage, ref: string): Promise<void> {
  const resolver = new Resolver({ plainHttp: true });
  try {
    const pusher = await resolver.pusher(ref);
    for (const b of img.blobs) {
      const desc: Descriptor = { ...b.desc };
      delete desc.platform;
      await pusher.push(desc, b.bytes, { tag: b === img.root ? true : undefined });
    }
  } finally {
    resolver.close();
  }
}

/** A running registry holding a built image under `ref`. */
export interface RegistryImage {
  registry: RunningRegistry;
  image: BuiltImage;
  /** `127.0.0.1:<port>/test/busybox:1` */
  ref: string;
}

/** Runs `fn` with a fresh registry holding a fresh busybox image; stops the registry after. */
export async function withRegistryImage(
  fn: (r: RegistryImage) => Promise<void>,
  opts: BuildOptions & { repo?: string } = {},
): Promise<void> {
  const registry = await startRegistry();
  try {
    const image = await buildBusyboxImage(opts);
    const ref = `${registry.host}/${opts.repo ?? "test/busybox"}:1`;
    await pushBuiltImage(image, ref);
    await fn({ registry, image, ref });
  } finally {
    await registry.stop();
  }
}

/** Whether the daemon serves the snapshots and diff APIs (needed to unpack and run images). */
export async function canUnpack(client: TainerdClient): Promise<boolean> {
  const { plugins } = await client.introspection.plugins({ filters: [] });
  const ok = (id: string) =>
    plugins.some((p) => p.type === "io.containerd.grpc.v1" && p.id === id && !p.initErr);
  return ok("snapshots") && ok("diff");
}

/** A TCP proxy in front of a registry that cuts its connections after some bytes. */
export interface CuttingProxy {
  /** `127.0.0.1:<port>` */
  host: string;
  /** Bytes sent to clients so far. */
  sent(): number;
  /** Whether the cut happened. */
  cut(): boolean;
  close(): Promise<void>;
}

/**
 * Starts a proxy to `target` (`127.0.0.1:<port>`) that, once it has sent `cutAfter` bytes
 * to clients, drops every connection; with `die` it also stops accepting new ones (the
 * registry is gone), otherwise later connections go through (a transient drop).
 */
export function startCuttingProxy(
  target: string,
  opts: { cutAfter: number; die?: boolean },
): CuttingProxy {
  const [hostname, port] = [target.split(":")[0], Number(target.split(":")[1])];
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  let sent = 0;
  let cut = false;
  let closed = false;
  const drop = () => {
    for (const c of conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    conns.clear();
  };
  const accepting = (async () => {
    for await (const client of listener) {
      if (cut && opts.die) {
        client.close();
        continue;
      }
      let upstream: Deno.Conn;
      try {
        upstream = await Deno.connect({ hostname, port });
      } catch {
        client.close();
        continue;
      }
      conns.add(client);
      conns.add(upstream);
      const pump = async (from: Deno.Conn, to: Deno.Conn, count: boolean) => {
        const buf = new Uint8Array(16 * 1024);
        try {
          for (;;) {
            const n = await from.read(buf);
            if (n === null) break;
            let chunk = buf.subarray(0, n);
            if (count && !cut && sent + n >= opts.cutAfter) {
              chunk = chunk.subarray(0, Math.max(0, opts.cutAfter - sent));
              for (let o = 0; o < chunk.length;) o += await to.write(chunk.subarray(o));
              sent += chunk.length;
              cut = true;
              if (opts.die) listener.close();
              drop();
              return;
            }
            for (let o = 0; o < chunk.length;) o += await to.write(chunk.subarray(o));
            if (count) sent += chunk.length;
          }
        } catch {
          // Dropped.
        }
        await Promise.resolve().then(() => to.closeWrite()).catch(() => {});
      };
      pump(client, upstream, false).catch(() => {});
      pump(upstream, client, true).catch(() => {});
    }
  })().catch(() => {});
  return {
    host: `127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    sent: () => sent,
    cut: () => cut,
    close: async () => {
      if (!closed) {
        closed = true;
        try {
          listener.close();
        } catch { /* closed */ }
      }
      drop();
      await accepting;
    },
  };
}
