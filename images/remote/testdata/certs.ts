/**
 * Test helper: a throwaway PKI made with openssl — a CA, a server certificate for 127.0.0.1
 * signed by it, a client certificate, and a self-signed token-signing certificate.
 *
 * @module
 */

import { join } from "node:path";

/** Paths of the generated files. */
export interface TestCerts {
  dir: string;
  caCert: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  tokenCert: string;
  tokenKey: string;
}

async function openssl(dir: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", {
    args,
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  if (!out.success) {
    throw new Error(`openssl ${args.join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
}

/** Creates the PKI in a new temporary directory (remove `dir` when done). */
export async function makeTestCerts(): Promise<TestCerts> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-certs-" });
  const p = (name: string) => join(dir, name);
  await Deno.writeTextFile(
    p("server.ext"),
    "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
  );
  await Deno.writeTextFile(
    p("client.ext"),
    "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
  );
  const key = ["-newkey", "rsa:2048", "-nodes"];
  await Promise.all([
    openssl(
      dir,
      "req",
      "-x509",
      ...key,
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "2",
      "-subj",
      "/CN=tainerd test CA",
    ),
    openssl(
      dir,
      "req",
      ...key,
      "-keyout",
      "server.key",
      "-out",
      "server.csr",
      "-subj",
      "/CN=127.0.0.1",
    ),
    openssl(
      dir,
      "req",
      ...key,
      "-keyout",
      "client.key",
      "-out",
      "client.csr",
      "-subj",
      "/CN=tainerd test client",
    ),
    openssl(
      dir,
      "req",
      "-x509",
      ...key,
      "-keyout",
      "token.key",
      "-out",
      "token.pem",
      "-days",
      "2",
      "-subj",
      "/CN=tainerd token issuer",
    ),
  ]);
  await openssl(
    dir,
    "x509",
    "-req",
    "-in",
    "server.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "server.pem",
    "-days",
    "2",
    "-extfile",
    "server.ext",
  );
  await openssl(
    dir,
    "x509",
    "-req",
    "-in",
    "client.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "client.pem",
    "-days",
    "2",
    "-extfile",
    "client.ext",
  );
  return {
    dir,
    caCert: p("ca.pem"),
    caKey: p("ca.key"),
    serverCert: p("server.pem"),
    serverKey: p("server.key"),
    clientCert: p("client.pem"),
    clientKey: p("client.key"),
    tokenCert: p("token.pem"),
    tokenKey: p("token.key"),
  };
}
