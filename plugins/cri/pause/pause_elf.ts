/**
 * The pause program of tainerd's sandbox image, generated here as a tiny static x86-64 Linux
 * ELF executable (no libc, no compiler): it does what Kubernetes' `pause` does and nothing
 * else —
 *
 * - SIGINT and SIGTERM: `exit(0)`;
 * - SIGCHLD: a handler that only interrupts `pause()`;
 * - forever: reap every exited child (`wait4(-1, …, WNOHANG)` until none), then `pause()`.
 *
 * Unlike a shell loop, it has no child process of its own (a `sleep` child showed up in a
 * pod's shared PID namespace, and critest's "execSync with timeout" found it), and it costs a
 * page of memory. Other architectures get `undefined` (the busybox shell loop is used there).
 *
 * @module
 */

/** Where the program is loaded (the usual base of a static x86-64 executable). */
const BASE = 0x400000;
/** ELF header (64 bytes) + one program header (56 bytes). */
const CODE_OFFSET = 64 + 56;

const SYS_RT_SIGACTION = 13;
const SYS_RT_SIGRETURN = 15;
const SYS_PAUSE = 34;
const SYS_EXIT = 60;
const SYS_WAIT4 = 61;
const SIGINT = 2;
const SIGTERM = 15;
const SIGCHLD = 17;
const SA_NOCLDSTOP = 0x1;
const SA_RESTORER = 0x04000000;
const WNOHANG = 1;

/** A little assembler: bytes, labels, and 32-bit absolute fix-ups. */
class Code {
  readonly bytes: number[] = [];
  readonly labels = new Map<string, number>();
  readonly #fixups: { at: number; label: string; kind: "abs32" | "abs64" | "rel8" }[] = [];

  label(name: string): void {
    this.labels.set(name, this.bytes.length);
  }

  emit(...b: number[]): void {
    this.bytes.push(...b);
  }

  imm32(v: number): void {
    this.emit(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  }

  /** `mov eax|edi|esi|edx, imm32` (b8+reg). */
  movImm(reg: "eax" | "edi" | "esi" | "edx", v: number): void {
    this.emit({ eax: 0xb8, edi: 0xbf, esi: 0xbe, edx: 0xba }[reg]);
    this.imm32(v);
  }

  /** `mov esi, <address of label>` (the program is below 4 GiB). */
  movLabel(label: string): void {
    this.emit(0xbe);
    this.#fixups.push({ at: this.bytes.length, label, kind: "abs32" });
    this.imm32(0);
  }

  /** A 64-bit absolute address of a label (data). */
  addr64(label: string): void {
    this.#fixups.push({ at: this.bytes.length, label, kind: "abs64" });
    this.emit(0, 0, 0, 0, 0, 0, 0, 0);
  }

  /** A short jump (`opcode rel8`) to a label. */
  jump(opcode: number, label: string): void {
    this.emit(opcode);
    this.#fixups.push({ at: this.bytes.length, label, kind: "rel8" });
    this.emit(0);
  }

  syscall(): void {
    this.emit(0x0f, 0x05);
  }

  resolve(base: number): Uint8Array {
    const out = Uint8Array.from(this.bytes);
    const view = new DataView(out.buffer);
    for (const f of this.#fixups) {
      const at = this.labels.get(f.label);
      if (at === undefined) throw new Error(`pause: no label ${f.label}`);
      if (f.kind === "abs32") view.setUint32(f.at, base + at, true);
      else if (f.kind === "abs64") view.setBigUint64(f.at, BigInt(base + at), true);
      else {
        const rel = at - (f.at + 1);
        if (rel < -128 || rel > 127) throw new Error(`pause: jump to ${f.label} out of range`);
        view.setInt8(f.at, rel);
      }
    }
    return out;
  }
}

function program(): Code {
  const c = new Code();
  // rt_sigaction(sig, &act, NULL, 8) for INT, TERM (exit) and CHLD (interrupt pause).
  for (const [sig, act] of [[SIGINT, "act_exit"], [SIGTERM, "act_exit"], [SIGCHLD, "act_chld"]]) {
    c.movImm("eax", SYS_RT_SIGACTION);
    c.movImm("edi", sig as number);
    c.movLabel(act as string);
    c.emit(0x31, 0xd2); // xor edx, edx
    c.emit(0x41, 0xba, 8, 0, 0, 0); // mov r10d, 8
    c.syscall();
  }
  c.label("loop");
  // wait4(-1, NULL, WNOHANG, NULL): reap one; again while one was reaped.
  c.movImm("eax", SYS_WAIT4);
  c.movImm("edi", -1);
  c.emit(0x31, 0xf6); // xor esi, esi
  c.movImm("edx", WNOHANG);
  c.emit(0x45, 0x31, 0xd2); // xor r10d, r10d
  c.syscall();
  c.emit(0x48, 0x85, 0xc0); // test rax, rax
  c.jump(0x7f, "loop"); // jg loop
  c.movImm("eax", SYS_PAUSE);
  c.syscall();
  c.jump(0xeb, "loop"); // jmp loop
  c.label("exit0");
  c.movImm("eax", SYS_EXIT);
  c.emit(0x31, 0xff); // xor edi, edi
  c.syscall();
  c.label("handler_ret");
  c.emit(0xc3); // ret
  c.label("restorer");
  c.movImm("eax", SYS_RT_SIGRETURN);
  c.syscall();
  // struct kernel_sigaction { handler; flags; restorer; mask } (8-byte aligned).
  while ((CODE_OFFSET + c.bytes.length) % 8 !== 0) c.emit(0x90);
  for (
    const [name, handler, flags] of [
      ["act_exit", "exit0", SA_RESTORER],
      ["act_chld", "handler_ret", SA_RESTORER | SA_NOCLDSTOP],
    ] as const
  ) {
    c.label(name);
    c.addr64(handler);
    c.emit(...u64(flags));
    c.addr64("restorer");
    c.emit(...u64(0)); // mask
  }
  return c;
}

function u64(v: number): number[] {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
  return [...b];
}

/** The pause executable for the host's architecture, or undefined when there is none. */
export function pauseExecutable(arch: string = Deno.build.arch): Uint8Array | undefined {
  if (arch !== "x86_64") return undefined;
  const code = program().resolve(BASE + CODE_OFFSET);
  const size = CODE_OFFSET + code.length;
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  // ELF header.
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0], 0); // ELFCLASS64, little endian, SysV
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, 0x3e, true); // EM_X86_64
  v.setUint32(20, 1, true); // EV_CURRENT
  v.setBigUint64(24, BigInt(BASE + CODE_OFFSET), true); // entry
  v.setBigUint64(32, 64n, true); // program headers at 64
  v.setBigUint64(40, 0n, true); // no section headers
  v.setUint32(48, 0, true); // flags
  v.setUint16(52, 64, true); // ehsize
  v.setUint16(54, 56, true); // phentsize
  v.setUint16(56, 1, true); // phnum
  v.setUint16(58, 64, true); // shentsize
  v.setUint16(60, 0, true); // shnum
  v.setUint16(62, 0, true); // shstrndx
  // One PT_LOAD of the whole file, read + execute.
  v.setUint32(64, 1, true); // PT_LOAD
  v.setUint32(68, 5, true); // PF_R | PF_X
  v.setBigUint64(72, 0n, true); // offset
  v.setBigUint64(80, BigInt(BASE), true); // vaddr
  v.setBigUint64(88, BigInt(BASE), true); // paddr
  v.setBigUint64(96, BigInt(size), true); // filesz
  v.setBigUint64(104, BigInt(size), true); // memsz
  v.setBigUint64(112, 0x1000n, true); // align
  out.set(code, CODE_OFFSET);
  return out;
}
