import assert from "node:assert/strict";
import { isKind } from "../plugins/errdefs.ts";
import { bash, withTempDir } from "../snapshots/test_helpers.ts";
import { rootPath } from "./root_path.ts";

Deno.test("applyLayer() contains hostile layers (cases in hostile_cases.ts, sandboxed)", async () => {
  // The cases run in a private mount namespace with / read-only and a tmpfs as TMPDIR, so
  // that a regression cannot write outside the sandbox (it fails with EROFS instead).
  const sandbox = await Deno.makeTempDir({ prefix: "tainerd-hostile-" });
  try {
    const cases = new URL("./hostile_cases.ts", import.meta.url).pathname;
    const script = `mount -t tmpfs -o size=512m tmpfs "$SANDBOX" && ` +
      `mount -o remount,bind,ro / && exec "$DENO" test -A --no-check "$CASES"`;
    const out = await new Deno.Command("unshare", {
      args: ["--mount", "--propagation", "private", "--", "bash", "-euc", script],
      env: {
        SANDBOX: sandbox,
        TMPDIR: sandbox,
        XDG_RUNTIME_DIR: sandbox,
        DENO: Deno.execPath(),
        CASES: cases,
        TAINERD_HOSTILE_SANDBOX: "1",
        NO_COLOR: "1",
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.ok(out.success, text);
    const passed = /ok \| (\d+) passed \| 0 failed/.exec(text);
    assert.ok(passed && Number(passed[1]) >= 40, text);
  } finally {
    await Deno.remove(sandbox, { recursive: true });
  }
});

Deno.test("hostile_cases.ts refuses to run outside its sandbox", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", "--no-check", new URL("./hostile_cases.ts", import.meta.url).pathname],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.success, false);
  assert.match(new TextDecoder().decode(out.stdout), /Run hostile layer cases through/);
});

Deno.test("rootPath() resolves like a chroot", async () => {
  await withTempDir(async (tmp) => {
    await bash(
      `
      mkdir -p r/a/b r/c && ln -s /c r/abs && ln -s ../../c r/a/b/up && ln -s loop r/loop
      ln -s b r/a/rel && ln -s /a/b/up/../x r/tricky
    `,
      tmp,
    );
    const r = `${tmp}/r`;
    assert.equal(rootPath(r, "/"), r);
    assert.equal(rootPath(r, "../../.."), r);
    assert.equal(rootPath(r, "abs/f"), `${r}/c/f`);
    assert.equal(rootPath(r, "a/b/up"), `${r}/c`);
    assert.equal(rootPath(r, "a/rel/up/z"), `${r}/c/z`);
    assert.equal(rootPath(r, "tricky"), `${r}/x`);
    assert.equal(rootPath(r, "missing/../a"), `${r}/a`);
    assert.throws(() => rootPath(r, "loop/x"), (e) => isKind(e, "InvalidArgument"));
  });
});
