import assert from "node:assert/strict";
import { generate } from "../scripts/gen.ts";

async function listFiles(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await listFiles(`${dir}/${e.name}`, rel));
    else out.push(rel);
  }
  return out.sort();
}

Deno.test("api/gen is what buf generates from api/proto (regenerate with deno task gen)", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tainerd-gen-" });
  try {
    await generate(tmp);
    const committed = new URL("./gen", import.meta.url).pathname;
    const want = await listFiles(tmp);
    assert.deepEqual(await listFiles(committed), want, "generated file list differs");
    for (const f of want) {
      const a = await Deno.readTextFile(`${committed}/${f}`);
      const b = await Deno.readTextFile(`${tmp}/${f}`);
      assert.ok(a === b, `api/gen/${f} is stale: run deno task gen`);
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
