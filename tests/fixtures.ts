/**
 * Test fixtures: a busybox root filesystem (Debian's busybox-static) in a temp dir.
 *
 * @module
 */

const APPLETS = [
  "sh",
  "echo",
  "sleep",
  "cat",
  "ls",
  "true",
  "false",
  "id",
  "env",
  "tty",
  "stty",
  "ps",
  "wc",
  "head",
  "touch",
  "mkdir",
  "rm",
  "hostname",
  "grep",
  "printf",
  "kill",
];

/** Makes a busybox rootfs under `dir` and returns its path. */
export async function busyboxRootfs(dir: string): Promise<string> {
  const root = `${dir}/rootfs`;
  await Deno.mkdir(`${root}/bin`, { recursive: true });
  for (const d of ["proc", "dev", "sys", "tmp", "etc", "run", "root"]) {
    await Deno.mkdir(`${root}/${d}`, { recursive: true });
  }
  await Deno.copyFile("/bin/busybox", `${root}/bin/busybox`);
  await Deno.chmod(`${root}/bin/busybox`, 0o755);
  for (const a of APPLETS) await Deno.symlink("busybox", `${root}/bin/${a}`);
  await Deno.writeTextFile(`${root}/etc/passwd`, "root:x:0:0:root:/root:/bin/sh\n");
  await Deno.writeTextFile(`${root}/etc/group`, "root:x:0:\n");
  return root;
}
