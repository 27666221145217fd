/**
 * `tainerd install` into a staging root (`--root`, like DESTDIR): the program (compiled or
 * bundle + wrapper), the systemd unit and a default config, idempotent, starting nothing.
 */

import assert from "node:assert/strict";
import { install, renderUnit, SYSTEMD_UNIT } from "../cli/install.ts";
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
      { path: "/usr/local/lib/tainerd/tainerd.js", action: "installed" },
      { path: "/usr/local/bin/tainerd", action: "installed" },
      { path: "/etc/systemd/system/tainerd.service", action: "installed" },
      { path: "/etc/tainerd/config.toml", action: "installed" },
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
      "usr/local/lib/tainerd/tainerd.js",
    ], "nothing else, no temp file left");
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
    assert.deepEqual(again.map((s) => s.action), ["unchanged", "unchanged", "unchanged", "kept"]);
    assert.equal(await Deno.readTextFile(config), 'version = 2\nroot = "/srv/tainerd"\n');
    // An upgrade replaces the program.
    await Deno.writeTextFile(`${from}/tainerd.js`, "console.log('newer');\n");
    const upgrade = await install({ root, from, deno: "/usr/bin/deno" });
    assert.deepEqual(upgrade.map((s) => s.action), ["installed", "unchanged", "unchanged", "kept"]);
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
    await assert.rejects(Deno.stat(`${root}/usr/local/lib/tainerd`), Deno.errors.NotFound);
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
