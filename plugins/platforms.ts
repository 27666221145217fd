/**
 * OCI platforms (os/architecture/variant), as containerd's `platforms` package names them.
 *
 * @module
 */

/** A target platform. */
export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

const ARCH: Record<string, string> = {
  x86_64: "amd64",
  aarch64: "arm64",
  arm: "arm",
  riscv64: "riscv64",
  s390x: "s390x",
  powerpc64le: "ppc64le",
};

/** The platform this process runs on, in OCI terms (`linux/amd64`, `linux/arm64/v8`). */
export function hostPlatform(): Platform {
  const architecture = ARCH[Deno.build.arch] ?? Deno.build.arch;
  const os = Deno.build.os === "darwin" ? "darwin" : Deno.build.os;
  return architecture === "arm64" ? { os, architecture, variant: "v8" } : { os, architecture };
}

/** Formats a platform as `os/arch[/variant]`. */
export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter((s) => s).join("/");
}
