/**
 * Unit tests of the SPDY session's lifecycle over an in-memory byte channel (the framing is
 * covered against client-go in server_test.ts).
 *
 * @module
 */

import assert from "node:assert/strict";
import { type ByteChannel, SpdySession } from "./spdy.ts";

/** A channel whose input the test ends, recording whether the session closed it. */
function fakeChannel() {
  const input = Promise.withResolvers<void>();
  let closes = 0;
  const channel: ByteChannel = {
    readable: (async function* (): AsyncGenerator<Uint8Array> {
      await input.promise;
      yield* [];
    })(),
    write: () => Promise.resolve(),
    close: () => void closes++,
  };
  return { channel, endInput: () => input.resolve(), closes: () => closes };
}

Deno.test("SpdySession: close() after the peer went away still closes the channel, once", async () => {
  const f = fakeChannel();
  const ended = Promise.withResolvers<void>();
  const session = new SpdySession(f.channel, {
    onStream: () => {},
    onClose: () => ended.resolve(),
  });
  f.endInput();
  await ended.promise;
  assert.equal(session.closed, true);
  assert.equal(f.closes(), 0, "the peer's EOF alone does not close our side");
  await session.close();
  assert.equal(f.closes(), 1);
  await session.close();
  assert.equal(f.closes(), 1);
  await session.done;
});

Deno.test("SpdySession: close() of a live session closes the channel", async () => {
  const f = fakeChannel();
  const session = new SpdySession(f.channel, { onStream: () => {} });
  await session.close();
  assert.equal(f.closes(), 1);
  f.endInput();
  await session.done;
});
