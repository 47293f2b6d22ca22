"""Runs x86-64 functions of a shared object on the Bochs CPU emulator (bochscpu), for
instructions the host lacks (AVX512_BF16). One Machine per process: loads the .so's PT_LOAD
segments, maps a data arena; `call` copies buffers into the arena, calls fn(ptrs..., scalars...)
with a return address on a hlt, and returns the buffers' bytes afterwards."""
import struct, subprocess
import bochscpu, bochscpu.cpu, bochscpu.memory

PAGE = bochscpu.memory.page_size()
BASE = 0x1000_0000
PML4 = 0x10_0000
ARENA = 0x4000_0000
STACK = 0x7000_0000
RET = 0x6000_0000

def load_so(path):
    data = open(path, "rb").read()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    segs = []
    for i in range(phnum):
        p_type, flags, off, vaddr, paddr, filesz, memsz, align = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            segs.append((vaddr, data[off:off + filesz], memsz))
    syms = {}
    for line in subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    return segs, syms

class Machine:
    def __init__(self, so_path, arena_bytes=64 << 20):
        self.sess = bochscpu.Session()
        self.sess.missing_page_handler = self._missing
        self.pt = bochscpu.memory.PageMapLevel4Table()
        self.next_gpa = 0x2000_0000
        self.pages = set()
        self.arena_bytes = arena_bytes
        segs, self.syms = load_so(so_path)
        for vaddr, blob, memsz in segs:
            self._map(BASE + vaddr, memsz)
        self._map(ARENA, arena_bytes)
        self._map(STACK - 16 * PAGE, 16 * PAGE)
        self._map(RET, 1)
        for hva, gpa in self.pt.commit(PML4):
            bochscpu.memory.page_insert(gpa, hva)
        for vaddr, blob, memsz in segs:
            self.write(BASE + vaddr, blob + bytes(memsz - len(blob)))
        self.write(RET, b"\xf4")

    def _missing(self, gpa):
        raise Exception(f"missing page gpa={gpa:#x}")

    def _map(self, gva, size):
        start = gva & ~(PAGE - 1)
        end = (gva + size + PAGE - 1) & ~(PAGE - 1)
        for va in range(start, end, PAGE):
            if va in self.pages:
                continue
            hva = bochscpu.memory.allocate_host_page()
            gpa = self.next_gpa
            self.next_gpa += PAGE
            bochscpu.memory.page_insert(gpa, hva)
            self.pt.insert(va, gpa, 1)
            self.pages.add(va)

    def write(self, gva, data):
        off = 0
        while off < len(data):
            va = gva + off
            n = min(len(data) - off, PAGE - (va % PAGE))
            assert bochscpu.memory.virt_write(PML4, va, list(data[off:off + n]))
            off += n

    def read(self, gva, size):
        out = bytearray()
        off = 0
        while off < size:
            va = gva + off
            n = min(size - off, PAGE - (va % PAGE))
            out += bytes(bochscpu.memory.virt_read(PML4, va, n))
            off += n
        return bytes(out)

    def call(self, func, buffers, scalars=()):
        addrs, at = [], ARENA
        for b in buffers:
            addrs.append(at)
            at += ((len(b) + PAGE - 1) // PAGE + 1) * PAGE
        assert at - ARENA <= self.arena_bytes, "arena too small"
        for a, b in zip(addrs, buffers):
            self.write(a, b)
        rsp = STACK - 64
        self.write(rsp, struct.pack("<Q", RET))
        st = bochscpu.State()
        bochscpu.cpu.set_long_mode(st)
        st.cr3 = PML4
        st.cr4 = st.cr4 | (1 << 18) | (1 << 9) | (1 << 10)  # OSXSAVE, OSFXSR, OSXMMEXCPT
        st.xcr0 = 0xE7  # x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
        st.mxcsr = 0x1F80
        st.rsp = rsp
        st.rip = BASE + self.syms[func]
        args = list(addrs) + list(scalars)
        assert len(args) <= 6
        for reg, v in zip(["rdi", "rsi", "rdx", "rcx", "r8", "r9"], args):
            setattr(st, reg, v)
        cs = bochscpu.Segment(); cs.present = True; cs.selector = 0x33; cs.base = 0; cs.limit = 0xFFFF_FFFF; cs.attr = 0x22FB
        st.cs = cs
        ds = bochscpu.Segment(); ds.present = True; ds.selector = 0x2B; ds.base = 0; ds.limit = 0xFFFF_FFFF; ds.attr = 0xCF3
        st.ds = ds; st.ss = ds; st.es = ds; st.fs = ds; st.gs = ds
        self.sess.cpu.state = st
        info = {}
        def on_exc(sess, cpu_id, vector, error_code):
            info["vector"] = vector
            sess.stop()
        hook = bochscpu.Hook()
        hook.exception = on_exc
        self.sess.run([hook])
        rip = self.sess.cpu.state.rip
        if rip not in (RET, RET + 1):
            raise RuntimeError(f"stopped at rip={rip:#x} (fn {func} at {BASE + self.syms[func]:#x}), exception {info}")
        return [self.read(a, len(b)) for a, b in zip(addrs, buffers)]
