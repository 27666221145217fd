/**
 * `tainerd install` into a staging root (`--root`, like DESTDIR): the program (compiled or
 * bundle + wrapper), the systemd unit and a default config, idempotent, starting nothing.
 */

import assert from "node:assert/strict";
import {
  install,
  type InstallManifest,
  manifestPath,
  renderUnit,
  SYSTEMD_UNIT,
  uninstall,
} from "../cli/install.ts";
import { formatDefaultConfig, loadConfig } from "../config/config.ts";
import { BUILTINS } from "../plugins/builtins.ts";
import { run } from "./harness.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** A temp dir with a stand-in build: a bundle (tainerd.js + wrapper) or a compiled (ELF) one. */
async function fakeBuild(dir: string, kind: "bundle" | "compiled"): Promise<string> {
  const out = `${dir}/dist-${kind}`;
  await Deno.mkdir(out);
  if (kind === "compiled") {
    await Deno.copyFile("/bin/true", `${out}/tainerd`);
  } else {
    await Deno.writeTextFile(`${out}/tainerd.js`, "console.log('fake bundle');\n");
    await Deno.mkdir(`${out}/chunks`);
    await Deno.writeTextFile(`${out}/chunks/cli-ABCD1234.js`, "export const cli = 1;\n");
    await Deno.writeTextFile(`${out}/tainerd`, "#!/bin/sh\n", { mode: 0o755 });
  }
  return out;
}

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-install-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function mode(path: string): number {
  return Deno.statSync(path).mode! & 0o7777;
}

Deno.test("install() stages a bundle, its wrapper, the unit and the default config", () =>
  withTemp(async (dir) => {
    const root = `${dir}/root`;
    const from = await fakeBuild(dir, "bundle");
    const steps = await install({ root, from, deno: "/opt/deno/bin/deno" });
    assert.deepEqual(steps, [
      { path: "/usr/local/lib/tainerd/chunks/cli-ABCD1234.js", action: "installed" },
      { path: "/usr/local/lib/tainerd/tainerd.js", action: "installed" },
      { path: "/usr/local/bin/tainerd", action: "installed" },
      { path: "/etc/systemd/system/tainerd.service", action: "installed" },
      { path: "/etc/tainerd/config.toml", action: "installed" },
      { path: "/usr/local/lib/tainerd/install-manifest.json", action: "installed" },
    ]);
    assert.equal(
      await Deno.readTextFile(`${root}/usr/local/lib/tainerd/tainerd.js`),
      await Deno.readTextFile(`${from}/tainerd.js`),
    );
    const wrapper = await Deno.readTextFile(`${root}/usr/local/bin/tainerd`);
    assert.match(wrapper, /^#!\/bin\/sh\n/);
    assert.match(wrapper, /deno=\$\{TAINERD_DENO:-\/opt\/deno\/bin\/deno\}/);
    assert.match(
      wrapper,
      /^exec "\$deno" run -A --no-config \/usr\/local\/lib\/tainerd\/tainerd\.js "\$@"$/m,
      "target paths, not staging paths",
    );
    assert.ok(!wrapper.includes(root));
    assert.equal(mode(`${root}/usr/local/bin/tainerd`), 0o755);
    const unit = await Deno.readTextFile(`${root}/etc/systemd/system/tainerd.service`);
    assert.equal(unit, SYSTEMD_UNIT, "the contrib unit as it is");
    assert.equal(mode(`${root}/etc/systemd/system/tainerd.service`), 0o644);
    const config = await Deno.readTextFile(`${root}/etc/tainerd/config.toml`);
    assert.equal(config, formatDefaultConfig(BUILTINS));
    const parsed = await loadConfig(`${root}/etc/tainerd/config.toml`, false);
    assert.equal(parsed.root, "/var/lib/tainerd");
    const files = [...walk(root)].sort();
    assert.deepEqual(files, [
      "etc/systemd/system/tainerd.service",
      "etc/tainerd/config.toml",
      "usr/local/bin/tainerd",
      "usr/local/lib/tainerd/chunks/cli-ABCD1234.js",
      "usr/local/lib/tainerd/install-manifest.json",
      "usr/local/lib/tainerd/tainerd.js",
    ], "nothing else, no temp file left");
    const manifest: InstallManifest = JSON.parse(
      await Deno.readTextFile(`${root}${manifestPath("/usr/local")}`),
    );
    assert.equal(manifest.kind, "bundle");
    assert.deepEqual(manifest.files.map((f) => f.path), [
      "/usr/local/lib/tainerd/chunks/cli-ABCD1234.js",
      "/usr/local/lib/tainerd/tainerd.js",
      "/usr/local/bin/tainerd",
      "/etc/systemd/system/tainerd.service",
    ]);
    assert.equal(manifest.config, "/etc/tainerd/config.toml");
  }));

function* walk(root: string, rel = ""): Generator<string> {
  for (const e of Deno.readDirSync(`${root}/${rel}`)) {
    const p = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory) yield* walk(root, p);
    else yield p;
  }
}

Deno.test("install() is idempotent and keeps an existing config", () =>
  withTemp(async (dir) => {
    const root = `${dir}/root`;
    const from = await fakeBuild(dir, "bundle");
    await install({ root, from, deno: "/usr/bin/deno" });
    const config = `${root}/etc/tainerd/config.toml`;
    await Deno.writeTextFile(config, 'version = 2\nroot = "/srv/tainerd"\n');
    const again = await install({ root, from, deno: "/usr/bin/deno" });
    assert.deepEqual(again.map((s) => s.action), [
      "unchanged",
      "unchanged",
      "unchanged",
      "unchanged",
      "kept",
      "unchanged",
    ]);
    assert.equal(await Deno.readTextFile(config), 'version = 2\nroot = "/srv/tainerd"\n');
    // An upgrade replaces the program, and its chunks: the old one goes.
    await Deno.writeTextFile(`${from}/tainerd.js`, "console.log('newer');\n");
    await Deno.rename(`${from}/chunks/cli-ABCD1234.js`, `${from}/chunks/cli-EFGH5678.js`);
    const upgrade = await install({ root, from, deno: "/usr/bin/deno" });
    assert.deepEqual(upgrade.map((s) => [s.path.split("/").at(-1), s.action]), [
      ["cli-EFGH5678.js", "installed"],
      ["cli-ABCD1234.js", "removed"],
      ["tainerd.js", "installed"],
      ["tainerd", "unchanged"],
      ["tainerd.service", "unchanged"],
      ["config.toml", "kept"],
      ["install-manifest.json", "installed"],
    ], "the manifest records the new hash");
    assert.deepEqual(
      [...Deno.readDirSync(`${root}/usr/local/lib/tainerd/chunks`)].map((e) => e.name),
      [
        "cli-EFGH5678.js",
      ],
    );
    assert.equal(
      await Deno.readTextFile(`${root}/usr/local/lib/tainerd/tainerd.js`),
      "console.log('newer');\n",
    );
  }));

Deno.test("install() of a compiled binary replaces an earlier bundle install", () =>
  withTemp(async (dir) => {
    const root = `${dir}/root`;
    await install({ root, from: await fakeBuild(dir, "bundle") });
    const compiled = await fakeBuild(dir, "compiled");
    const steps = await install({ root, from: `${compiled}/tainerd` });
    assert.deepEqual(steps.slice(0, 2), [
      { path: "/usr/local/bin/tainerd", action: "installed" },
      { path: "/usr/local/lib/tainerd/tainerd.js", action: "removed" },
    ]);
    assert.deepEqual(
      await Deno.readFile(`${root}/usr/local/bin/tainerd`),
      await Deno.readFile("/bin/true"),
    );
    assert.equal(mode(`${root}/usr/local/bin/tainerd`), 0o755);
    await assert.rejects(
      Deno.stat(`${root}/usr/local/lib/tainerd/tainerd.js`),
      Deno.errors.NotFound,
    );
    assert.deepEqual([...Deno.readDirSync(`${root}/usr/local/lib/tainerd`)].map((e) => e.name), [
      "install-manifest.json",
    ]);
  }));

Deno.test("install() follows --prefix, --config-dir and --systemd-dir", () =>
  withTemp(async (dir) => {
    const root = `${dir}/root`;
    const steps = await install({
      root,
      from: await fakeBuild(dir, "compiled"),
      prefix: "/opt/tainerd/",
      configDir: "/etc/tainerd-test",
      systemdDir: "/usr/lib/systemd/system",
    });
    assert.deepEqual(steps.map((s) => s.path), [
      "/opt/tainerd/bin/tainerd",
      "/usr/lib/systemd/system/tainerd.service",
      "/etc/tainerd-test/config.toml",
      "/opt/tainerd/lib/tainerd/install-manifest.json",
    ]);
    const unit = await Deno.readTextFile(`${root}/usr/lib/systemd/system/tainerd.service`);
    assert.match(
      unit,
      /^ExecStart=\/opt\/tainerd\/bin\/tainerd daemon --config \/etc\/tainerd-test\/config\.toml$/m,
    );
    assert.equal(
      unit,
      renderUnit({ prefix: "/opt/tainerd", configDir: "/etc/tainerd-test" }),
    );
  }));

Deno.test("install() refuses bad paths and a missing build", () =>
  withTemp(async (dir) => {
    const from = await fakeBuild(dir, "compiled");
    const root = `${dir}/root`;
    await assert.rejects(install({ root, from, prefix: "usr/local" }), /absolute path/);
    await assert.rejects(install({ root, from, configDir: "/etc/my tainerd" }), /whitespace/);
    await assert.rejects(install({ root, from: `${dir}/nowhere` }), /no such file/);
    await Deno.mkdir(`${dir}/empty`);
    await assert.rejects(install({ root, from: `${dir}/empty` }), /expected a compiled tainerd/);
    // Run from the source tree (neither compiled nor bundled), there is nothing to install.
    await assert.rejects(install({ root }), /Cannot install from the source tree/);
    await assert.rejects(Deno.stat(root), Deno.errors.NotFound, "nothing written");
  }));

Deno.test("tainerd install --root stages the files and starts nothing", () =>
  withTemp(async (dir) => {
    const root = `${dir}/root`;
    const from = await fakeBuild(dir, "bundle");
    const r = await run(Deno.execPath(), [
      "run",
      "-A",
      MAIN,
      "install",
      "--root",
      root,
      "--from",
      from,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^installed +\/usr\/local\/bin\/tainerd$/m);
    assert.match(r.stdout, /^installed +\/etc\/tainerd\/config\.toml$/m);
    assert.doesNotMatch(r.stdout, /systemctl/, "no advice to start a staged install");
    const again = await run(Deno.execPath(), [
      "run",
      "-A",
      MAIN,
      "install",
      "--root",
      root,
      "--from",
      `${from}/tainerd`,
    ]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /^unchanged +\/usr\/local\/bin\/tainerd$/m);
    assert.match(again.stdout, /^kept +\/etc\/tainerd\/config\.toml$/m);
    const bad = await run(Deno.execPath(), ["run", "-A", MAIN, "install", "--root", root]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^tainerd: Cannot install from the source tree/);
  }));

/** Stand-ins for the data tainerd keeps: never touched by uninstall. */
async function fakeData(root: string): Promise<string[]> {
  const files = [`${root}/var/lib/tainerd/metadata.db`, `${root}/run/tainerd/tainerd.sock`];
  for (const f of files) {
    await Deno.mkdir(f.slice(0, f.lastIndexOf("/")), { recursive: true });
    await Deno.writeTextFile(f, "data\n");
  }
  return files;
}

Deno.test("uninstall() removes a bundle install, keeps the config and the data, idempotently", () =>
  withTemp(async (dir) => {
    const root = `${dir}/root`;
    await install({ root, from: await fakeBuild(dir, "bundle"), deno: "/usr/bin/deno" });
    const data = await fakeData(root);
    // Something else in the same directories stays.
    await Deno.writeTextFile(`${root}/usr/local/bin/other`, "#!/bin/sh\n");
    await Deno.writeTextFile(`${root}/etc/systemd/system/other.service`, "[Unit]\n");
    const steps = await uninstall({ root });
    assert.deepEqual(steps, [
      { path: "/usr/local/lib/tainerd/chunks/cli-ABCD1234.js", action: "removed" },
      { path: "/usr/local/lib/tainerd/tainerd.js", action: "removed" },
      { path: "/usr/local/bin/tainerd", action: "removed" },
      { path: "/etc/systemd/system/tainerd.service", action: "removed" },
      { path: "/etc/tainerd/config.toml", action: "kept" },
      { path: "/usr/local/lib/tainerd/install-manifest.json", action: "removed" },
    ]);
    assert.deepEqual([...walk(root)].sort(), [
      "etc/systemd/system/other.service",
      "etc/tainerd/config.toml",
      "run/tainerd/tainerd.sock",
      "usr/local/bin/other",
      "var/lib/tainerd/metadata.db",
    ]);
    await assert.rejects(Deno.stat(`${root}/usr/local/lib/tainerd`), Deno.errors.NotFound);
    for (const f of data) assert.equal(await Deno.readTextFile(f), "data\n");
    // Again: nothing left to remove but the config, still kept.
    assert.deepEqual(await uninstall({ root }), [
      { path: "/etc/tainerd/config.toml", action: "kept" },
    ]);
    // --purge-config takes the config (and its now empty directory), not the data.
    assert.deepEqual(await uninstall({ root, purgeConfig: true }), [
      { path: "/etc/tainerd/config.toml", action: "removed" },
    ]);
    await assert.rejects(Deno.stat(`${root}/etc/tainerd`), Deno.errors.NotFound);
    assert.deepEqual(await uninstall({ root, purgeConfig: true }), []);
    for (const f of data) assert.equal(await Deno.readTextFile(f), "data\n");
  }));

Deno.test("uninstall() follows the paths install recorded; --purge-config removes the config", () =>
  withTemp(async (dir) => {
    const root = `${dir}/root`;
    const paths = {
      prefix: "/opt/tainerd",
      configDir: "/etc/td",
      systemdDir: "/usr/lib/systemd/system",
    };
    await install({ root, from: await fakeBuild(dir, "compiled"), ...paths });
    await fakeData(root);
    // The unit and config directories come from the manifest, found under the prefix.
    const steps = await uninstall({ root, prefix: "/opt/tainerd", purgeConfig: true });
    assert.deepEqual(steps, [
      { path: "/opt/tainerd/bin/tainerd", action: "removed" },
      { path: "/usr/lib/systemd/system/tainerd.service", action: "removed" },
      { path: "/etc/td/config.toml", action: "removed" },
      { path: "/opt/tainerd/lib/tainerd/install-manifest.json", action: "removed" },
    ]);
    assert.deepEqual([...walk(root)].sort(), [
      "run/tainerd/tainerd.sock",
      "var/lib/tainerd/metadata.db",
    ]);
  }));

Deno.test("uninstall() removes a listed shim launcher and tolerates files already gone", () =>
  withTemp(async (dir) => {
    const root = `${dir}/root`;
    await install({ root, from: await fakeBuild(dir, "compiled") });
    // A shim launcher recorded in the manifest (as an install that puts one in place does).
    const shim = "/usr/local/bin/containerd-shim-tainerd-v2";
    const launcher = new TextEncoder().encode('#!/bin/sh\nexec tainerd shim "$@"\n');
    await Deno.writeFile(`${root}${shim}`, launcher, { mode: 0o755 });
    const mpath = `${root}${manifestPath("/usr/local")}`;
    const m: InstallManifest = JSON.parse(await Deno.readTextFile(mpath));
    const hash = Array.from(
      new Uint8Array(await crypto.subtle.digest("SHA-256", launcher)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    m.files.push({ path: shim, sha256: hash });
    await Deno.writeTextFile(mpath, JSON.stringify(m));
    await Deno.remove(`${root}/etc/systemd/system/tainerd.service`);
    const steps = await uninstall({ root });
    assert.deepEqual(steps, [
      { path: "/usr/local/bin/tainerd", action: "removed" },
      { path: "/etc/systemd/system/tainerd.service", action: "absent" },
      { path: shim, action: "removed" },
      { path: "/etc/tainerd/config.toml", action: "kept" },
      { path: "/usr/local/lib/tainerd/install-manifest.json", action: "removed" },
    ]);
    assert.deepEqual([...walk(root)].sort(), ["etc/tainerd/config.toml"]);
  }));

Deno.test("uninstall() refuses files it did not install, removing nothing", () =>
  withTemp(async (dir) => {
    const root = `${dir}/root`;
    // No manifest: a tainerd put there by hand (or by another package) stays.
    await Deno.mkdir(`${root}/usr/local/bin`, { recursive: true });
    await Deno.copyFile("/bin/true", `${root}/usr/local/bin/tainerd`);
    await assert.rejects(
      uninstall({ root }),
      /Not removing \/usr\/local\/bin\/tainerd: not installed by tainerd install/,
    );
    assert.ok(await Deno.stat(`${root}/usr/local/bin/tainerd`));
    await Deno.remove(root, { recursive: true });

    // A file changed since install wrote it: nothing is removed.
    await install({ root, from: await fakeBuild(dir, "bundle") });
    const unit = `${root}/etc/systemd/system/tainerd.service`;
    await Deno.writeTextFile(unit, "[Service]\nExecStart=/usr/bin/something-else\n");
    await assert.rejects(
      uninstall({ root }),
      /Not removing anything: \/etc\/systemd\/system\/tainerd\.service changed/,
    );
    const before = [...walk(root)].sort();
    assert.ok(before.includes("usr/local/bin/tainerd"));
    assert.ok(before.includes("usr/local/lib/tainerd/install-manifest.json"));

    // A manifest listing a file that is not tainerd's.
    await Deno.writeTextFile(`${root}/etc/passwd`, "root:x:0:0::/root:/bin/sh\n");
    const mpath = `${root}${manifestPath("/usr/local")}`;
    const m: InstallManifest = JSON.parse(await Deno.readTextFile(mpath));
    m.files.push({ path: "/etc/passwd", sha256: "0".repeat(64) });
    await Deno.writeTextFile(mpath, JSON.stringify(m));
    await assert.rejects(
      uninstall({ root }),
      /lists files tainerd does not install \(\/etc\/passwd\)/,
    );
    await Deno.writeTextFile(mpath, "not json");
    await assert.rejects(uninstall({ root }), /not valid JSON/);
    assert.deepEqual([...walk(root)].sort(), [...before, "etc/passwd"].sort(), "nothing removed");
  }));

Deno.test("tainerd uninstall --root removes a staged install", () =>
  withTemp(async (dir) => {
    const root = `${dir}/root`;
    const from = await fakeBuild(dir, "bundle");
    let r = await run(Deno.execPath(), [
      "run",
      "-A",
      MAIN,
      "install",
      "--root",
      root,
      "--from",
      from,
    ]);
    assert.equal(r.code, 0, r.stderr);
    r = await run(Deno.execPath(), ["run", "-A", MAIN, "uninstall", "--root", root]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^removed +\/usr\/local\/bin\/tainerd$/m);
    assert.match(r.stdout, /^kept +\/etc\/tainerd\/config\.toml$/m);
    assert.doesNotMatch(r.stdout, /systemctl/, "no advice for a staged uninstall");
    r = await run(Deno.execPath(), [
      "run",
      "-A",
      MAIN,
      "uninstall",
      "--root",
      root,
      "--purge-config",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^removed +\/etc\/tainerd\/config\.toml$/m);
    r = await run(Deno.execPath(), ["run", "-A", MAIN, "uninstall", "--root", root]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "Nothing to uninstall.\n");
    await Deno.mkdir(`${root}/etc/systemd/system`, { recursive: true });
    await Deno.writeTextFile(`${root}/etc/systemd/system/tainerd.service`, "[Unit]\n");
    r = await run(Deno.execPath(), ["run", "-A", MAIN, "uninstall", "--root", root]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tainerd: Not removing \/etc\/systemd\/system\/tainerd\.service/);
  }));
