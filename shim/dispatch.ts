/**
 * Whether this process runs as the shim: `tainerd shim …`, or a binary invoked under a shim's
 * name (`containerd-shim-tainerd-v2`, `tainerd-shim`, e.g. a symlink to the compiled tainerd).
 * Kept free of imports so that the entry point can check it before loading the shim itself.
 *
 * @module
 */

/** Executable names that run the shim directly, without the `shim` sub-command. */
export const SHIM_BINARY_NAMES: readonly string[] = ["containerd-shim-tainerd-v2", "tainerd-shim"];

function basename(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

/** The name this process was invoked as (argv[0]), from `/proc/self/cmdline`. */
function argv0(): string {
  try {
    const cmdline = Deno.readFileSync("/proc/self/cmdline");
    const end = cmdline.indexOf(0);
    return new TextDecoder().decode(end < 0 ? cmdline : cmdline.subarray(0, end));
  } catch {
    return "";
  }
}

/**
 * The shim's own arguments when this process should run as the shim, else null: the arguments
 * after `shim` for `tainerd shim …`, or all of them when the executable is named as a shim.
 */
export function shimArgs(args: readonly string[]): string[] | null {
  if (args[0] === "shim") return args.slice(1);
  if (Deno.build.standalone) {
    for (const name of [argv0(), Deno.execPath()]) {
      if (SHIM_BINARY_NAMES.includes(basename(name))) return [...args];
    }
  }
  return null;
}
