/**
 * The debug endpoint: `[debug] address` serves health JSON and a CPU profile on a unix socket
 * created mode 0600.
 */

import assert from "node:assert/strict";
import { withDaemon } from "./harness.ts";

async function curl(sock: string, path: string): Promise<{ code: string; body: string }> {
  const out = await new Deno.Command("curl", {
    args: ["-sS", "--unix-socket", sock, "-w", "\n%{http_code}", `http://localhost${path}`],
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const i = text.lastIndexOf("\n");
  return { body: text.slice(0, i), code: text.slice(i + 1) };
}

Deno.test("debug endpoint serves vars and a CPU profile on a 0600 socket", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tainerd-debug-" });
  const sock = `${tmp}/debug.sock`;
  try {
    await withDaemon(async () => {
      const st = await Deno.lstat(sock);
      assert.ok(st.isSocket);
      assert.equal(st.mode! & 0o777, 0o600);
      let r = await curl(sock, "/debug/vars");
      assert.equal(r.code, "200", r.body);
      const vars = JSON.parse(r.body);
      assert.ok(vars.memory.rss > 0 && vars.memory.heapUsed > 0);
      assert.ok(vars.uptime_seconds > 0);
      assert.ok(vars.open_fds > 0);
      r = await curl(sock, "/debug/pprof/profile?seconds=1");
      assert.equal(r.code, "200", r.body);
      const profile = JSON.parse(r.body);
      assert.ok(Array.isArray(profile.nodes) && profile.nodes.length > 0);
      assert.ok(profile.endTime > profile.startTime);
      r = await curl(sock, "/debug/pprof/profile?seconds=abc");
      assert.equal(r.code, "400");
      assert.equal((await curl(sock, "/nope")).code, "404");
    }, { config: `[debug]\naddress = "${sock}"\n` });
    await assert.rejects(Deno.lstat(sock), Deno.errors.NotFound);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
