/**
 * Regenerates api/gen/ from api/proto/ with buf and protoc-gen-es (npm packages pinned in
 * tools/package.json, installed on first use). `--out DIR` writes elsewhere (the staleness
 * test compares such a fresh run with the committed code).
 *
 * @module
 */

const root = new URL("..", import.meta.url).pathname;
const tools = `${root}tools`;

/** Installs the generator tools when missing. */
export async function ensureTools(): Promise<string> {
  const bin = `${tools}/node_modules/.bin`;
  try {
    await Deno.stat(`${bin}/buf`);
    await Deno.stat(`${bin}/protoc-gen-es`);
  } catch {
    const out = await new Deno.Command("npm", {
      args: ["ci", "--no-audit", "--no-fund", "--prefix", tools],
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (!out.success) throw new Error("npm ci in tools/ failed");
  }
  return bin;
}

/** Runs buf generate, writing to `outDir` (api/gen by default). */
export async function generate(outDir = `${root}api/gen`): Promise<void> {
  const bin = await ensureTools();
  const template = JSON.stringify({
    version: "v2",
    inputs: [{ directory: "proto" }],
    plugins: [{
      local: `${bin}/protoc-gen-es`,
      out: outDir,
      opt: ["target=ts", "import_extension=ts"],
    }],
    clean: true,
  });
  const out = await new Deno.Command(`${bin}/buf`, {
    args: ["generate", "--template", template],
    cwd: `${root}api`,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error("buf generate failed");
}

if (import.meta.main) {
  const i = Deno.args.indexOf("--out");
  await generate(i >= 0 ? Deno.args[i + 1] : undefined);
}
