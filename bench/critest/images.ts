/**
 * Offline lookalikes of the images critest (cri-tools v1.37.0) pulls, built from Debian's
 * busybox-static and two tiny static Go programs (bench/critest/webserver.go, nonewprivs.go),
 * and pushed to a loopback registry under the upstream repository paths, so that hosts.toml
 * mirrors for `registry.k8s.io`, `k8s.gcr.io` and `gcr.io` resolve them there.
 *
 * Each image mimics what the specs check of the upstream one: the busybox applets at their
 * usual paths, `/etc/passwd` and `/etc/group` as busybox's image (with `www-data`), the
 * `USER` of the image-user images, the extra group of `test-image-predefined-group`, distinct
 * images for `test-image-1..3` and one image behind the three `test-image-tags` tags, web
 * servers answering on the expected port (`nginx` writing `/var/run/nginx.pid`, `httpd`
 * logging its name), and a set-user-ID root `nonewprivs`. The digest-pinned
 * `test-image-digest@sha256:9700f9…` cannot be reproduced: it stays offline-only.
 *
 * @module
 */

import { gzipSync } from "node:zlib";
import { TarType, type TarWriterEntry, writeTar } from "../../archive/tar/mod.ts";
import { digestOf } from "../../plugins/content/digest.ts";
import { PAUSE_ENTRYPOINT } from "../../plugins/cri/pause/pause.ts";
import { pauseExecutable } from "../../plugins/cri/pause/pause_elf.ts";
import { hostPlatform } from "../../images/platforms.ts";
import type { Descriptor } from "../../images/remote/descriptor.ts";
import {
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_LAYER_GZIP,
  MEDIA_TYPE_OCI_MANIFEST,
} from "../../images/remote/media_types.ts";
import { Resolver } from "../../images/remote/resolver.ts";

/** The upstream registry hosts critest's images live on (each gets a hosts.toml mirror). */
export const UPSTREAM_HOSTS = ["registry.k8s.io", "k8s.gcr.io", "gcr.io", "docker.io"];

/** The image critest pulls by digest: not reproducible offline. */
export const OFFLINE_ONLY_IMAGES = [
  "gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2f5bf2c45f2f605a0bd3bce7cf37420ec9d3ed50ac2758413308766bf",
];

/** One blob: descriptor and bytes. */
interface Blob {
  desc: Descriptor;
  bytes: Uint8Array;
}

/** A built image ready to push: its blobs (manifest last). */
export interface LookalikeImage {
  /** The repository path and tag in the registry (`e2e-test-images/busybox:1.29-2`). */
  path: string;
  blobs: Blob[];
  /** The manifest's digest. */
  digest: string;
}

/** A file added to the busybox base. */
interface ExtraFile {
  name: string;
  body: Uint8Array;
  mode?: number;
}

/** What an image adds to the busybox base. */
interface ImageSpec {
  /** Repository paths and tags (all get the same image). */
  paths: string[];
  files?: ExtraFile[];
  user?: string;
  entrypoint?: string[];
  cmd?: string[];
  /** Extra `/etc/passwd` and `/etc/group` lines. */
  passwd?: string[];
  group?: string[];
  exposedPorts?: number[];
}

const encoder = new TextEncoder();
const E2E = "e2e-test-images";
const STAGING = "k8s-staging-cri-tools";

/** busybox's own image: these users and groups (www-data is what the username specs use). */
const PASSWD = [
  "root:x:0:0:root:/root:/bin/sh",
  "daemon:x:1:1:daemon:/usr/sbin:/bin/false",
  "bin:x:2:2:bin:/bin:/bin/false",
  "sys:x:3:3:sys:/dev:/bin/false",
  "sync:x:4:100:sync:/bin:/bin/sync",
  "mail:x:8:8:mail:/var/spool/mail:/bin/false",
  "www-data:x:33:33:www-data:/var/www:/bin/false",
  "operator:x:37:37:Operator:/var:/bin/false",
  "nobody:x:65534:65534:nobody:/home:/bin/false",
];
const GROUP = [
  "root:x:0:",
  "daemon:x:1:",
  "bin:x:2:",
  "sys:x:3:",
  "adm:x:4:",
  "tty:x:5:",
  "disk:x:6:",
  "wheel:x:10:root",
  "mail:x:8:",
  "www-data:x:33:",
  "users:x:100:",
  "nogroup:x:65534:",
];

/** `pgrep NAME`: the PIDs of processes named NAME, one a line; status 1 when none. */
const PGREP = '#!/bin/sh\np=$(pidof "$1") || exit 1\nfor i in $p; do echo "$i"; done\n';

/** `ipcs -m`: the System V shared memory segments of the IPC namespace, as util-linux's. */
const IPCS = `#!/bin/sh
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
tail -n +2 /proc/sysvipc/shm | while read -r key shmid perms size cpid lpid nattch uid rest; do
  printf '0x%08x %-10s %-10s %-10s %-10s %-10s\\n' "$key" "$shmid" "$uid" "$perms" "$size" "$nattch"
done
`;

function blob(mediaType: string, bytes: Uint8Array): Blob {
  return { desc: { mediaType, digest: digestOf(bytes), size: bytes.byteLength }, bytes };
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** busybox's applets with their usual paths (`usr/bin/env`, `bin/sh`, …). */
async function appletPaths(busybox: string): Promise<string[]> {
  const out = await new Deno.Command(busybox, { args: ["--list-full"], stdout: "piped" }).output();
  return new TextDecoder().decode(out.stdout).split("\n").filter((l) => l && l !== "bin/busybox");
}

/** Builds one image from the busybox base and its spec. */
async function buildImage(
  spec: ImageSpec,
  base: { busybox: Uint8Array; applets: string[] },
): Promise<LookalikeImage[]> {
  const meta = { uid: 0, gid: 0, mtime: { sec: 0, nsec: 0 } };
  const entries = new Map<string, TarWriterEntry>();
  const dir = (name: string, mode = 0o755) =>
    entries.set(`${name}/`, { header: { ...meta, name: `${name}/`, type: TarType.Dir, mode } });
  const file = (name: string, body: Uint8Array, mode = 0o644) => {
    const parts = name.split("/");
    for (let i = 1; i < parts.length; i++) dir(parts.slice(0, i).join("/"));
    entries.set(name, {
      header: { ...meta, name, type: TarType.Regular, mode, size: body.byteLength },
      body,
    });
  };
  for (const d of ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "home", "root", "var"]) {
    dir(d);
  }
  for (const d of ["dev", "proc", "sys"]) dir(d, 0o555);
  dir("tmp", 0o1777);
  dir("var/run");
  dir("var/www");
  file("bin/busybox", base.busybox, 0o755);
  // Hard links, as busybox's image: masking one applet (MaskedPaths /bin/ls) then hides that
  // name only, where a symlink would mask busybox itself.
  for (const a of base.applets) {
    const parts = a.split("/");
    for (let i = 1; i < parts.length; i++) dir(parts.slice(0, i).join("/"));
    entries.set(a, {
      header: { ...meta, name: a, type: TarType.Hardlink, mode: 0o755, linkname: "bin/busybox" },
    });
  }
  file("etc/passwd", encoder.encode([...PASSWD, ...(spec.passwd ?? [])].join("\n") + "\n"));
  file("etc/group", encoder.encode([...GROUP, ...(spec.group ?? [])].join("\n") + "\n"));
  // busybox-static has no pgrep (the exec timeout spec runs `pgrep sleep`): a pidof wrapper.
  file("usr/bin/pgrep", encoder.encode(PGREP), 0o755);
  // Nor ipcs (the HostIpc specs run `ipcs -m`): the segments of /proc/sysvipc/shm.
  file("usr/bin/ipcs", encoder.encode(IPCS), 0o755);
  for (const f of spec.files ?? []) file(f.name, f.body, f.mode ?? 0o644);
  // Directories first, then busybox (the hard links' target must come before them), then
  // the rest, each group by name.
  const rank = (e: TarWriterEntry) =>
    e.header.type === TarType.Dir ? 0 : e.header.name === "bin/busybox" ? 1 : 2;
  const sorted = [...entries.values()].sort((a, b) =>
    rank(a) - rank(b) || (a.header.name < b.header.name ? -1 : 1)
  );
  const tar = await readAll(writeTar(sorted));
  const layer = blob(MEDIA_TYPE_OCI_LAYER_GZIP, gzipSync(tar, { level: 6 }));
  const platform = hostPlatform();
  const config = blob(
    MEDIA_TYPE_OCI_CONFIG,
    encoder.encode(JSON.stringify({
      created: "1970-01-01T00:00:00Z",
      architecture: platform.architecture,
      os: platform.os,
      config: {
        ...(spec.user ? { User: spec.user } : {}),
        Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        ...(spec.entrypoint ? { Entrypoint: spec.entrypoint } : {}),
        Cmd: spec.cmd ?? ["sh"],
        ...(spec.exposedPorts
          ? { ExposedPorts: Object.fromEntries(spec.exposedPorts.map((p) => [`${p}/tcp`, {}])) }
          : {}),
      },
      rootfs: { type: "layers", diff_ids: [digestOf(tar)] },
      history: [{ created: "1970-01-01T00:00:00Z", created_by: "tainerd bench/critest" }],
    })),
  );
  const manifest = blob(
    MEDIA_TYPE_OCI_MANIFEST,
    encoder.encode(JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPE_OCI_MANIFEST,
      config: config.desc,
      layers: [layer.desc],
    })),
  );
  return spec.paths.map((path) => ({
    path,
    blobs: [layer, config, manifest],
    digest: manifest.desc.digest,
  }));
}

/** Builds a static Go program from `bench/critest/<name>.go` into `outDir`. */
async function buildGo(name: string, outDir: string): Promise<Uint8Array> {
  const src = new URL(`./${name}.go`, import.meta.url).pathname;
  const out = `${outDir}/${name}`;
  const go = ["/usr/local/go/bin/go", "go"].find((g) => {
    try {
      return g.startsWith("/") ? Deno.statSync(g).isFile : true;
    } catch {
      return false;
    }
  })!;
  const r = await new Deno.Command(go, {
    args: ["build", "-trimpath", "-ldflags=-s -w", "-o", out, src],
    cwd: outDir,
    env: { CGO_ENABLED: "0" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!r.success) {
    throw new Error(`go build ${name}: ${new TextDecoder().decode(r.stderr)}`);
  }
  return await Deno.readFile(out);
}

/** The specs of every lookalike (paths are registry paths, without the upstream host). */
function imageSpecs(web: Uint8Array, nnp: Uint8Array): ImageSpec[] {
  const arch = hostPlatform().architecture;
  const test = (name: string, paths: string[]): ImageSpec => ({
    paths,
    files: [{ name, body: new Uint8Array() }],
  });
  return [
    { paths: [`${E2E}/busybox:1.29-2`] },
    {
      paths: [`${E2E}/nginx:1.14-2`],
      files: [{ name: "usr/sbin/nginx", body: web, mode: 0o755 }],
      cmd: ["nginx", "80", "/var/run/nginx.pid"],
      exposedPorts: [80],
    },
    {
      paths: [`${E2E}/httpd:2.4.39-4`],
      files: [{ name: "usr/local/apache2/bin/httpd", body: web, mode: 0o755 }],
      cmd: ["/usr/local/apache2/bin/httpd", "80", "/usr/local/apache2/logs/httpd.pid"],
      exposedPorts: [80],
    },
    {
      paths: [`${STAGING}/hostnet-nginx-${arch}:latest`],
      files: [{ name: "usr/sbin/nginx", body: web, mode: 0o755 }],
      cmd: ["nginx", "12003", "/var/run/nginx.pid"],
      exposedPorts: [12003],
    },
    {
      paths: [`${E2E}/nonewprivs:1.3`],
      files: [{ name: "usr/local/bin/nnp", body: nnp, mode: 0o4755 }],
      entrypoint: ["/usr/local/bin/nnp"],
      cmd: [],
    },
    { paths: [`${STAGING}/test-image-user-uid:latest`], user: "1002" },
    { paths: [`${STAGING}/test-image-user-username:latest`], user: "www-data" },
    { paths: [`${STAGING}/test-image-user-uid-group:latest`], user: "1003:1004" },
    { paths: [`${STAGING}/test-image-user-username-group:latest`], user: "www-data:1004" },
    {
      paths: [`${STAGING}/test-image-predefined-group:latest`],
      user: "1000",
      passwd: ["default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh"],
      group: ["default-user:x:1000:", "group-defined-in-image:x:50000:default-user"],
    },
    test("test-image-1", [`${STAGING}/test-image-1:latest`]),
    test("test-image-2", [`${STAGING}/test-image-2:latest`]),
    test("test-image-3", [`${STAGING}/test-image-3:latest`]),
    test("test-image-latest", [`${STAGING}/test-image-latest:latest`]),
    test("test-image-tag", [`${STAGING}/test-image-tag:test`, `${STAGING}/test-image-tag:all`]),
    test("same-image", [1, 2, 3].map((t) => `${STAGING}/test-image-tags:${t}`)),
  ];
}

/** Builds every lookalike image (and the pause:3.9 stand-in). */
export async function buildLookalikes(workDir: string): Promise<LookalikeImage[]> {
  const busyboxPath = "/bin/busybox";
  const base = {
    busybox: await Deno.readFile(busyboxPath),
    applets: await appletPaths(busyboxPath),
  };
  const [web, nnp] = [await buildGo("webserver", workDir), await buildGo("nonewprivs", workDir)];
  const images: LookalikeImage[] = [];
  for (const spec of imageSpecs(web, nnp)) images.push(...await buildImage(spec, base));
  // pause:3.9 (containerd's sandbox image here; critest pulls it from registry.k8s.io and
  // k8s.gcr.io): tainerd's pause program (the generated static /pause where there is one, as
  // upstream's pause is a static binary without children; else the busybox loop) on the busybox
  // base, an image of its own (were it tainerd's own pause image, its ID would carry tainerd's
  // sandbox image tag too).
  const pause = pauseExecutable();
  images.push(
    ...await buildImage({
      paths: ["pause:3.9"],
      user: "65535:65535",
      entrypoint: pause ? ["/pause"] : [...PAUSE_ENTRYPOINT],
      cmd: [],
      files: pause ? [{ name: "pause", body: pause, mode: 0o755 }] : [],
    }, base),
  );
  return images;
}

/** Pushes the images to a plain-HTTP registry at `host` (`127.0.0.1:<port>`). */
export async function pushLookalikes(images: LookalikeImage[], host: string): Promise<void> {
  const resolver = new Resolver({ plainHttp: true });
  try {
    for (const img of images) {
      const pusher = await resolver.pusher(`${host}/${img.path}`);
      for (const b of img.blobs) {
        await pusher.push({ ...b.desc }, b.bytes, {
          tag: b === img.blobs.at(-1) ? true : undefined,
        });
      }
    }
  } finally {
    resolver.close();
  }
}

/** Writes a hosts.toml per upstream host under `dir`, all pointing at the registry. */
export async function writeHostsDir(dir: string, registryHost: string): Promise<void> {
  for (const h of UPSTREAM_HOSTS) {
    await Deno.mkdir(`${dir}/${h}`, { recursive: true });
    await Deno.writeTextFile(
      `${dir}/${h}/hosts.toml`,
      // containerd 1.6 rejects a hosts.toml without a `host` table ("invalid `host` tree").
      `server = "http://${registryHost}"\n\n[host."http://${registryHost}"]\n` +
        `  capabilities = ["pull", "resolve"]\n`,
    );
  }
}
