/**
 * Test images, built from scratch as OCI image layouts (gzip layers, one linux/amd64
 * manifest): a busybox image for running containers and a large one for pulls (one layer with
 * a big random file, one with ~20,000 small files). Layouts are imported with
 * `ctr images import` (as a tar archive) or pushed to a registry with skopeo.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
import { busyboxRootfs } from "../../tests/fixtures.ts";
import { sh } from "./proc.ts";

/** An image as an OCI layout on disk. */
export interface LayoutImage {
  /** The layout directory. */
  dir: string;
  /** Its tag (`org.opencontainers.image.ref.name`). */
  tag: string;
  /** The manifest's digest. */
  manifest: string;
  /** The layers' digests (compressed blobs). */
  layers: string[];
  /** The sum of the blob sizes in bytes (layers, config, manifest). */
  bytes: number;
  /** For the pull image: each of its layers as a one-layer image. */
  single?: { large: LayoutImage; small: LayoutImage };
}

const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

async function sha256File(path: string): Promise<string> {
  const r = await sh(`sha256sum ${q(path)}`);
  return `sha256:${r.stdout.split(" ")[0]}`;
}

async function putBlob(dir: string, data: string): Promise<{ digest: string; size: number }> {
  const bytes = new TextEncoder().encode(data);
  const tmp = `${dir}/blobs/tmp`;
  await Deno.writeFile(tmp, bytes);
  const digest = await sha256File(tmp);
  await Deno.rename(tmp, `${dir}/blobs/sha256/${digest.slice(7)}`);
  return { digest, size: bytes.byteLength };
}

/**
 * Builds an OCI layout from root filesystem directories, one gzip layer each (ustar, owned by
 * root, mtime 0), and removes the directories.
 */
export async function buildLayout(dir: string, tag: string, roots: string[]): Promise<LayoutImage> {
  await Deno.mkdir(`${dir}/blobs/sha256`, { recursive: true });
  const layers: { digest: string; size: number; diffId: string }[] = [];
  for (const [i, root] of roots.entries()) {
    const tar = `${dir}/blobs/layer-${i}.tar`;
    await sh(
      `tar --format=ustar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 ` +
        `-C ${q(root)} -cf ${q(tar)} .`,
    );
    const diffId = await sha256File(tar);
    await sh(`gzip -n -1 ${q(tar)}`);
    const gz = `${tar}.gz`;
    const digest = await sha256File(gz);
    const size = (await Deno.stat(gz)).size;
    await Deno.rename(gz, `${dir}/blobs/sha256/${digest.slice(7)}`);
    layers.push({ digest, size, diffId });
    await Deno.remove(root, { recursive: true });
  }
  const config = await putBlob(
    dir,
    JSON.stringify({
      architecture: "amd64",
      os: "linux",
      config: { Env: ["PATH=/bin"], Cmd: ["/bin/sh"] },
      rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
      history: layers.map(() => ({ created_by: "tainerd bench", created: "1970-01-01T00:00:00Z" })),
    }),
  );
  const manifest = await putBlob(
    dir,
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
      layers: layers.map((l) => ({
        mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
        digest: l.digest,
        size: l.size,
      })),
    }),
  );
  await Deno.writeTextFile(`${dir}/oci-layout`, JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  await Deno.writeTextFile(
    `${dir}/index.json`,
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [{
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        ...manifest,
        platform: { architecture: "amd64", os: "linux" },
        annotations: { "org.opencontainers.image.ref.name": tag },
      }],
    }),
  );
  return {
    dir,
    tag,
    manifest: manifest.digest,
    layers: layers.map((l) => l.digest),
    bytes: layers.reduce((n, l) => n + l.size, 0) + config.size + manifest.size,
  };
}

/** Archives a layout as a tar stream file for `ctr images import`. */
export async function archiveLayout(image: LayoutImage, out: string): Promise<void> {
  await sh(`tar -C ${q(image.dir)} -cf ${q(out)} oci-layout index.json blobs/sha256`);
}

/** The busybox image (Debian's busybox-static with its applets as symlinks). */
export async function buildBusyboxImage(dir: string): Promise<LayoutImage> {
  await Deno.mkdir(dir, { recursive: true });
  const work = await Deno.makeTempDir({ dir: `${dir}/..`, prefix: "busybox-" });
  const root = await busyboxRootfs(work);
  const image = await buildLayout(dir, "latest", [root]);
  await Deno.remove(work, { recursive: true });
  return image;
}

/** Options of {@link buildPullImage}. */
export interface PullImageOptions {
  /** The size of the random file in MiB. */
  randomMiB: number;
  /** How many small files the second layer has. */
  smallFiles: number;
}

/**
 * The pull image: layer 1 holds one file of random bytes, layer 2 `smallFiles` files of 64 B to
 * 4 KiB (base64 text, so they compress like source code) in directories of 200.
 */
export async function buildPullImage(dir: string, opts: PullImageOptions): Promise<LayoutImage> {
  await Deno.mkdir(dir, { recursive: true });
  const work = await Deno.makeTempDir({ dir: `${dir}/..`, prefix: "pull-" });
  const big = `${work}/big`;
  await Deno.mkdir(`${big}/data`, { recursive: true });
  await sh(`head -c ${opts.randomMiB * 1024 * 1024} /dev/urandom > ${q(`${big}/data/random.bin`)}`);
  const small = `${work}/small`;
  const pool = randomBytes(1 << 20).toString("base64");
  let seed = 1;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648);
  for (let i = 0; i < opts.smallFiles; i++) {
    const d = `${small}/src/d${String(Math.floor(i / 200)).padStart(3, "0")}`;
    if (i % 200 === 0) Deno.mkdirSync(d, { recursive: true });
    const size = 64 + (next() % 4033);
    const at = next() % (pool.length - size);
    Deno.writeTextFileSync(
      `${d}/f${String(i % 200).padStart(3, "0")}.txt`,
      pool.slice(at, at + size),
    );
  }
  // The same two layers as images of their own (issue 5's per-layer figures); buildLayout
  // consumes its roots, so these get copies.
  await sh(`cp -a ${q(big)} ${q(`${big}-1`)} && cp -a ${q(small)} ${q(`${small}-1`)}`);
  const single = {
    large: await buildLayout(`${dir}-large`, "latest", [`${big}-1`]),
    small: await buildLayout(`${dir}-small`, "latest", [`${small}-1`]),
  };
  const image = await buildLayout(dir, "latest", [big, small]);
  image.single = single;
  await Deno.remove(work, { recursive: true });
  return image;
}

/** Pushes a layout to a registry (plain HTTP) with skopeo. */
export async function pushLayout(image: LayoutImage, ref: string): Promise<void> {
  await sh(
    `skopeo copy --quiet --dest-tls-verify=false ${q(`oci:${image.dir}:${image.tag}`)} ` +
      q(`docker://${ref}`),
  );
}
