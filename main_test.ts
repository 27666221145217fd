import assert from "node:assert/strict";
import { daemonFastPath } from "./main.ts";

Deno.test("daemonFastPath() takes the daemon's own flags, leaves the rest to the CLI", () => {
  assert.deepEqual(daemonFastPath(["daemon"]), {});
  assert.deepEqual(
    daemonFastPath([
      "daemon",
      "-c",
      "/etc/t.toml",
      "--address=/run/t.sock",
      "--root",
      "/var/lib/t",
      "--state",
      "/run/t",
      "-l",
      "debug",
    ]),
    {
      config: "/etc/t.toml",
      address: "/run/t.sock",
      root: "/var/lib/t",
      state: "/run/t",
      logLevel: "debug",
    },
  );
  assert.deepEqual(daemonFastPath(["daemon", "--log-level=warn"]), { logLevel: "warn" });
  // The CLI answers these as it always did: help, unknown flags, a missing value, others.
  for (
    const args of [
      ["daemon", "--help"],
      ["daemon", "-h"],
      ["daemon", "--bogus", "x"],
      ["daemon", "--root"],
      ["daemon", "--root", "--state", "/x"],
      ["daemon", "extra"],
      ["version"],
      [],
    ]
  ) {
    assert.equal(daemonFastPath(args), null, args.join(" "));
  }
});
