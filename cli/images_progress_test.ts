import assert from "node:assert/strict";
import { bytesSize, progressBar, ProgressDisplay, tabwrite } from "./images_progress.ts";
import { goDuration } from "./images.ts";

Deno.test("bytesSize() prints binary units as ctr's progress.Bytes", () => {
  assert.equal(bytesSize(0), "0.0 B");
  assert.equal(bytesSize(370), "370.0 B");
  assert.equal(bytesSize(1290445), "1.2 MiB");
  assert.equal(bytesSize(23410491), "22.3 MiB");
  assert.equal(bytesSize(1024), "1.0 KiB");
});

Deno.test("progressBar() and tabwrite() draw ctr's table", () => {
  assert.equal(progressBar(0, 10), "|--------|");
  assert.equal(progressBar(0.5, 10), "|++++----|");
  assert.equal(progressBar(1, 10), "|++++++++|");
  assert.equal(tabwrite([["a:", "done"], ["bbb:", "x"]]), "a:   done \nbbb: x    \n");
});

Deno.test("ProgressDisplay prints one final frame when not a terminal", () => {
  let printed = "";
  const p = new ProgressDisplay({ tty: false, out: (s) => (printed += s) });
  p.handler({ ref: "ref", status: "resolved", offset: 0, total: 0 });
  p.handler({ ref: "layer-x", status: "downloading", offset: 512, total: 1024 });
  p.handler({ ref: "layer-x", status: "done", offset: 1024, total: 1024 });
  assert.equal(printed, "");
  p.finish();
  assert.match(
    printed,
    /^ref:\s+resolved\s+\|\+{38}\|\s*\nlayer-x:\s+done\s+\|\+{38}\|\s*\nelapsed: /,
  );
  assert.match(printed, /total:\s+1\.0 Ki/);
});

Deno.test("goDuration() prints as Go's time.Duration", () => {
  assert.equal(goDuration(21.260506), "21.260506ms");
  assert.equal(goDuration(1500), "1.5s");
  assert.equal(goDuration(0.5), "500µs");
  assert.equal(goDuration(61000), "1m1s");
});
