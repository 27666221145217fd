/**
 * Builds a small OCI image from Debian's busybox-static, offline, as an OCI layout tarball
 * that `tainerd images import` and `ctr images import` read:
 *
 *   deno run -A scripts/busybox_image.ts OUT.tar [NAME]
 *
 * NAME defaults to `docker.io/tainerd/busybox:latest`.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";
import { hostPlatform } from "../plugins/platforms.ts";

const encoder = new TextEncoder();

function sha256(data: Uint8Array): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

async function run(cmd: string, args: string[], cwd?: string): Promise<Uint8Array> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return out.stdout;
}

/** Builds the image tarball at `out`, named `name`. Returns the manifest digest. */
export async function buildBusyboxImage(out: string, name: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-busybox-" });
  try {
    const root = `${dir}/rootfs`;
    for (const d of ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var"]) {
      await Deno.mkdir(`${root}/${d}`, { recursive: true });
    }
    await Deno.chmod(`${root}/tmp`, 0o1777);
    await Deno.copyFile("/bin/busybox", `${root}/bin/busybox`);
    await Deno.chmod(`${root}/bin/busybox`, 0o755);
    const applets = new TextDecoder().decode(await run("/bin/busybox", ["--list"]))
      .split("\n").filter((a) => a && a !== "busybox");
    for (const a of applets) await Deno.symlink("busybox", `${root}/bin/${a}`);
    await Deno.writeTextFile(`${root}/etc/passwd`, "root:x:0:0:root:/root:/bin/sh\n");
    await Deno.writeTextFile(`${root}/etc/group`, "root:x:0:\n");
    const tar = await run("tar", [
      "--sort=name",
      "--owner=0",
      "--group=0",
      "--numeric-owner",
      "--mtime=@0",
      "-C",
      root,
      "-cf",
      "-",
      ".",
    ]);
    const layer = gzipSync(tar, { level: 6 });
    const platform = hostPlatform();
    const config = encoder.encode(JSON.stringify({
      architecture: platform.architecture,
      os: platform.os,
      ...(platform.variant ? { variant: platform.variant } : {}),
      config: {
        Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        Cmd: ["/bin/sh"],
      },
      rootfs: { type: "layers", diff_ids: [sha256(tar)] },
      history: [{ created_by: "tainerd scripts/busybox_image.ts" }],
    }));
    const desc = (mediaType: string, data: Uint8Array) => ({
      mediaType,
      digest: sha256(data),
      size: data.length,
    });
    const manifest = encoder.encode(JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: desc("application/vnd.oci.image.config.v1+json", config),
      layers: [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    }));
    const manifestDesc = desc("application/vnd.oci.image.manifest.v1+json", manifest);
    const index = encoder.encode(JSON.stringify({
      schemaVersion: 2,
      manifests: [{
        ...manifestDesc,
        platform,
        annotations: {
          "io.containerd.image.name": name,
          "org.opencontainers.image.ref.name": name.slice(name.lastIndexOf(":") + 1),
        },
      }],
    }));
    const layout = `${dir}/layout`;
    await Deno.mkdir(`${layout}/blobs/sha256`, { recursive: true });
    for (const blob of [layer, config, manifest]) {
      await Deno.writeFile(`${layout}/blobs/sha256/${sha256(blob).slice(7)}`, blob);
    }
    await Deno.writeFile(`${layout}/index.json`, index);
    await Deno.writeTextFile(
      `${layout}/oci-layout`,
      JSON.stringify({ imageLayoutVersion: "1.0.0" }),
    );
    const target = out.startsWith("/") ? out : `${Deno.cwd()}/${out}`;
    await run("tar", [
      "--owner=0",
      "--group=0",
      "-C",
      layout,
      "-cf",
      target,
      "oci-layout",
      "index.json",
      "blobs",
    ]);
    return manifestDesc.digest;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) {
  const [out, name = "docker.io/tainerd/busybox:latest"] = Deno.args;
  if (!out) {
    console.error("usage: deno run -A scripts/busybox_image.ts OUT.tar [NAME]");
    Deno.exit(2);
  }
  const digest = await buildBusyboxImage(out, name);
  console.log(`${out}: ${name} ${digest}`);
}
