/**
 * Tests of the CRI FIFO sets with real writer processes: creation, reading into the log and
 * into exec buffers, stdin, never hanging without a peer, cleanup.
 *
 * @module
 */

import assert from "node:assert/strict";
import { ContainerIO, ExecIO, fifoPaths, makeFifo } from "./fifo.ts";
import { parseCriLog } from "./log.ts";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-crififo-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Runs `sh -c script` with the FIFO paths as $1 (stdin), $2 (stdout), $3 (stderr). */
async function sh(script: string, p: { stdin: string; stdout: string; stderr: string }) {
  const out = await new Deno.Command("sh", {
    args: ["-c", script, "sh", p.stdin, p.stdout, p.stderr],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

function within<T>(ms: number, p: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms);
    }),
  ]);
}

Deno.test("fifoPaths() names <dir>/<id>-stdin|stdout|stderr; no stderr with a terminal", () => {
  assert.deepEqual(fifoPaths("/run/x", "c1", { stdin: true }), {
    stdin: "/run/x/c1-stdin",
    stdout: "/run/x/c1-stdout",
    stderr: "/run/x/c1-stderr",
    terminal: false,
  });
  assert.deepEqual(fifoPaths("/run/x", "c1", { tty: true }), {
    stdin: "",
    stdout: "/run/x/c1-stdout",
    stderr: "",
    terminal: true,
  });
});

Deno.test("makeFifo() keeps an existing FIFO and refuses anything else", () =>
  withTempDir(async (dir) => {
    makeFifo(`${dir}/f`);
    makeFifo(`${dir}/f`);
    assert.ok((await Deno.lstat(`${dir}/f`)).isFifo);
    await Deno.writeTextFile(`${dir}/r`, "");
    assert.throws(() => makeFifo(`${dir}/r`), { kind: "AlreadyExists" });
  }));

Deno.test("ContainerIO copies a real writer's stdout and stderr into the CRI log", () =>
  withTempDir(async (dir) => {
    const io = await ContainerIO.create(`${dir}/io`, "c1", { stdin: false, tty: false });
    assert.equal(io.paths.stdin, "");
    for (const p of [io.paths.stdout, io.paths.stderr]) {
      assert.ok((await Deno.lstat(p)).isFifo, p);
    }
    assert.equal((await Deno.stat(`${dir}/io`)).mode! & 0o777, 0o700);
    const logPath = `${dir}/c1.log`;
    await io.attachLog(logPath, 16);
    await sh(
      'exec >"$2" 2>"$3"; echo hi; echo oops >&2; printf "%040d\\n" 7; printf "no newline"',
      io.paths,
    );
    await within(5000, io.wait(), "wait()");
    await io.close();
    const entries = parseCriLog(await Deno.readTextFile(logPath));
    const out = entries.filter((e) => e.stream === "stdout").map((e) => [e.partial, e.content]);
    assert.deepEqual(out, [
      [false, "hi"],
      [true, "0".repeat(16)],
      [true, "0".repeat(16)],
      [false, "0".repeat(7) + "7"],
      [true, "no newline"],
    ]);
    assert.deepEqual(entries.filter((e) => e.stream === "stderr").map((e) => e.content), [
      "oops",
    ]);
    assert.equal(await exists(io.paths.stdout), false);
    assert.equal(await exists(`${dir}/io`), false, "the emptied directory is removed");
  }));

Deno.test("ContainerIO opens without a writer and close() never hangs", () =>
  withTempDir(async (dir) => {
    const io = await within(
      1000,
      ContainerIO.create(dir, "lonely", { stdin: true, tty: false }),
      "create()",
    );
    await io.attachLog(`${dir}/lonely.log`);
    const wrote = io.stdin!.write(new TextEncoder().encode("nobody reads this"));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(io.stdin!.connected, false);
    await within(1000, io.close(), "close()");
    assert.equal(await wrote, false);
    assert.equal(await Deno.readTextFile(`${dir}/lonely.log`), "");
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["lonely.log"]);

    // Never attached either.
    const io2 = await ContainerIO.create(`${dir}/x`, "x", { tty: true });
    assert.equal(io2.paths.stderr, "");
    await within(1000, io2.close(), "close()");
    assert.equal(await exists(`${dir}/x`), false);
  }));

Deno.test("ContainerIO with a terminal logs everything as stdout; attach stdin reaches it", () =>
  withTempDir(async (dir) => {
    const io = await ContainerIO.create(dir, "t", { stdin: true, tty: true });
    await io.attachLog(`${dir}/t.log`);
    const child = new Deno.Command("sh", {
      args: [
        "-c",
        'exec <"$1" >"$2"; read line; echo "got $line"',
        "sh",
        io.paths.stdin,
        io
          .paths.stdout,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    assert.equal(await io.stdin!.write(new TextEncoder().encode("ping\n")), true);
    await io.stdin!.close();
    assert.equal((await child.status).code, 0);
    await within(5000, io.wait(), "wait()");
    await io.reopenLog();
    await io.close();
    const entries = parseCriLog(await Deno.readTextFile(`${dir}/t.log`));
    assert.deepEqual(entries.map((e) => [e.stream, e.content]), [["stdout", "got ping"]]);
  }));

Deno.test("ContainerIO with no log path discards the output", () =>
  withTempDir(async (dir) => {
    const io = await ContainerIO.create(`${dir}/io`, "d", {});
    assert.equal(await io.attachLog(""), null);
    await sh('exec >"$2" 2>"$3"; seq 1 20000; echo err >&2', io.paths);
    await within(5000, io.wait(), "wait()");
    await io.close();
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  }));

Deno.test("ExecIO collects output with a cap and feeds stdin bytes", () =>
  withTempDir(async (dir) => {
    const stdin = new TextEncoder().encode("line 1\nline 2\n".repeat(10_000)); // 140 KB > pipe
    const io = await ExecIO.create(`${dir}/io`, "e1", { stdin, maxOutput: 100_000 });
    const child = new Deno.Command("sh", {
      args: ["-c", 'exec <"$1" >"$2" 2>"$3"; cat; echo done >&2', "sh", ...[
        io.paths.stdin,
        io.paths.stdout,
        io.paths.stderr,
      ]],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    assert.equal(await within(5000, io.stdinWritten, "stdin"), true);
    assert.equal((await child.status).code, 0);
    const out = await within(5000, io.wait(), "wait()");
    assert.equal(out.stdout.byteLength, 100_000);
    assert.deepEqual(out.stdout, stdin.subarray(0, 100_000));
    assert.equal(out.stdoutTruncated, true);
    assert.equal(new TextDecoder().decode(out.stderr), "done\n");
    assert.equal(out.stderrTruncated, false);
    await io.close();
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  }));

Deno.test("ExecIO.close() ends a process that never came", () =>
  withTempDir(async (dir) => {
    const io = await ExecIO.create(`${dir}/e`, "e2", { stdin: new Uint8Array([1, 2]) });
    await within(1000, io.close(), "close()");
    assert.equal(await io.stdinWritten, false);
    const out = await io.wait();
    assert.equal(out.stdout.byteLength, 0);
    assert.equal(await exists(`${dir}/e`), false);
  }));
