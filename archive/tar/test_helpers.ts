/**
 * Helpers shared by the tar codec's tests: running GNU tar and friends, chunked streams,
 * reading whole archives.
 *
 * @module
 */

import { readTar } from "./reader.ts";
import type { TarHeader } from "./header.ts";

/** The outcome of a finished command. */
export interface RunResult {
  /** Exit code. */
  code: number;
  /** Standard output. */
  stdout: Uint8Array;
  /** Standard error, decoded. */
  stderr: string;
}

/** Runs a command to completion, optionally feeding `stdin`; throws unless it exits 0. */
export async function run(
  cmd: string,
  args: string[],
  options: { cwd?: string; stdin?: Uint8Array | ReadableStream<Uint8Array> } = {},
): Promise<RunResult> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: options.cwd,
    stdin: options.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin instanceof Uint8Array) {
    const w = child.stdin.getWriter();
    await w.write(options.stdin);
    await w.close();
  } else if (options.stdin) {
    await options.stdin.pipeTo(child.stdin);
  }
  const out = await child.output();
  const result = {
    code: out.code,
    stdout: out.stdout,
    stderr: new TextDecoder().decode(out.stderr),
  };
  if (out.code !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} failed (${out.code}): ${result.stderr}`);
  }
  return result;
}

/** Runs a command and returns its standard output as text. */
export async function runText(cmd: string, args: string[], cwd?: string): Promise<string> {
  return new TextDecoder().decode((await run(cmd, args, { cwd })).stdout);
}

/** Whether a program is on the PATH. */
export function hasProgram(name: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
    try {
      Deno.statSync(`${dir}/${name}`);
      return true;
    } catch {
      // Not here.
    }
  }
  return false;
}

/** Whether `dir`'s filesystem accepts `user.*` xattrs (needs `setfattr`). */
export async function userXattrsWork(dir: string): Promise<boolean> {
  if (!hasProgram("setfattr")) return false;
  const probe = `${dir}/.xattr-probe`;
  await Deno.writeTextFile(probe, "");
  try {
    await run("setfattr", ["-n", "user.probe", "-v", "1", probe]);
    return true;
  } catch {
    return false;
  } finally {
    await Deno.remove(probe);
  }
}

/** A stream that yields `bytes` in chunks of the given sizes (cycled), pulled on demand. */
export function chunked(
  bytes: Uint8Array,
  sizes: number[] = [bytes.length || 1],
): ReadableStream<Uint8Array> {
  let pos = 0;
  let i = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (pos >= bytes.length) {
        controller.close();
        return;
      }
      const n = sizes[i++ % sizes.length];
      controller.enqueue(bytes.slice(pos, pos + n));
      pos += n;
    },
  }, { highWaterMark: 0 });
}

/** Reads a whole stream into one array. */
export async function collect(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** An archive entry with its body read into memory. */
export interface ReadEntry {
  /** The entry's header. */
  header: TarHeader;
  /** The entry's body. */
  data: Uint8Array;
}

/** Reads every entry of an archive (with bodies) into memory. */
export async function readAll(
  archive: Uint8Array | ReadableStream<Uint8Array>,
  sizes?: number[],
): Promise<ReadEntry[]> {
  const stream = archive instanceof Uint8Array ? chunked(archive, sizes) : archive;
  const out: ReadEntry[] = [];
  for await (const { header, body } of readTar(stream)) {
    out.push({ header, data: await collect(body) });
  }
  return out;
}

/** Hex of bytes, for comparing with `getfattr -e hex`. */
export function hex(bytes: Uint8Array): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Reads one xattr of a path (not following symlinks) as bytes, with `getfattr`. */
export async function getXattr(path: string, name: string): Promise<Uint8Array> {
  const out = await runText("getfattr", ["-h", "-e", "hex", "-n", name, path]);
  const m = /=0x([0-9a-f]*)/.exec(out);
  if (!m) throw new Error(`No xattr ${name} on ${path}: ${out}`);
  return Uint8Array.from(m[1].match(/../g) ?? [], (h) => parseInt(h, 16));
}

/** Nanosecond mtime of a path (not following symlinks), as `[sec, nsec]`. */
export async function mtimeNs(path: string): Promise<[number, number]> {
  const out = (await runText("stat", ["-c", "%Y %y", path])).trim();
  const sec = Number(out.split(" ")[0]);
  const frac = /\.(\d+)/.exec(out)?.[1] ?? "0";
  return [sec, Number(frac.padEnd(9, "0").slice(0, 9))];
}
