import assert from "node:assert/strict";
import { close, isErrno, O_CLOEXEC, O_RDONLY, open, read } from "./libc.ts";
import { listenConsoleSocket, recvmsgFd, sendmsgFd, unixConnect } from "./console_socket.ts";

/** Reads `fd` to its end with libc read(2). */
function readAll(fd: number): string {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(4096);
  for (let n; (n = read(fd, buf)) > 0;) chunks.push(buf.slice(0, n));
  return new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c])));
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-console-test" });
  try {
    await fn(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

const SENDER = `
import os, socket, sys
r, w = os.pipe()
os.write(w, b"hello from the pty")
os.close(w)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
socket.send_fds(s, [b"/dev/pts/9"], [r])
s.close()
`;

Deno.test("listenConsoleSocket() receives a working fd sent with SCM_RIGHTS", async () => {
  await withDir(async (dir) => {
    const sock = listenConsoleSocket(`${dir}/console.sock`);
    try {
      const accepted = sock.accept();
      const sender = await new Deno.Command("python3", { args: ["-c", SENDER, sock.path] })
        .output();
      assert.ok(sender.success, new TextDecoder().decode(sender.stderr));
      const fd = await accepted;
      try {
        assert.equal(readAll(fd), "hello from the pty");
      } finally {
        close(fd);
      }
    } finally {
      await sock.close();
    }
    assert.throws(() => Deno.statSync(sock.path), Deno.errors.NotFound);
  });
});

Deno.test("ConsoleSocket.close() cancels a pending accept()", async () => {
  await withDir(async (dir) => {
    const sock = listenConsoleSocket(`${dir}/console.sock`);
    const pending = sock.accept();
    await new Promise((resolve) => setTimeout(resolve, 20));
    const closed = sock.close();
    await assert.rejects(pending, (e: Error & { kind?: string }) => e.kind === "Canceled");
    await closed;
    await assert.rejects(sock.accept(), (e: Error & { kind?: string }) => e.kind === "Canceled");
  });
});

Deno.test("ConsoleSocket.accept() fails when the peer sends no fd", async () => {
  await withDir(async (dir) => {
    await using sock = listenConsoleSocket(`${dir}/console.sock`);
    const accepted = sock.accept();
    const fd = unixConnect(sock.path);
    close(fd);
    await assert.rejects(accepted, (e: Error & { kind?: string }) => e.kind === "Unavailable");
  });
});

Deno.test("sendmsgFd() and recvmsgFd() pass an fd over a raw socket", async () => {
  await withDir(async (dir) => {
    Deno.writeTextFileSync(`${dir}/file`, "file content");
    const sock = listenConsoleSocket(`${dir}/console.sock`);
    try {
      assert.throws(() => listenConsoleSocket(sock.path), (e) => isErrno(e, "EADDRINUSE"));
      const accepted = sock.accept();
      const client = unixConnect(sock.path);
      const file = open(`${dir}/file`, O_RDONLY | O_CLOEXEC);
      try {
        assert.equal(sendmsgFd(client, file, new TextEncoder().encode("name")), 4);
      } finally {
        close(file);
        close(client);
      }
      const got = await accepted;
      try {
        assert.equal(readAll(got), "file content");
      } finally {
        close(got);
      }
    } finally {
      await sock.close();
    }
    assert.throws(() => unixConnect(`${dir}/console.sock`), (e) => isErrno(e, "ENOENT"));
    assert.throws(() => recvmsgFd(-1), (e) => isErrno(e, "EBADF"));
  });
});
