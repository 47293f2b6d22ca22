#!/usr/bin/env bash
# Runs chargpt's AVX512_BF16 code (src/kernels/matmul_bf16/avx512.rs) on the Bochs CPU emulator,
# for machines without the instruction, and checks it against numpy (check_kernels.py).
#
# The emulator is bochscpu-python 0.4.0 from PyPI, used from a patched copy in a temporary
# directory (site-packages is not touched):
# - its wheel wants glibc 2.38's __isoc23_strtoull/__isoc23_sscanf; glibc_shim.c supplies them;
# - it emulates a CPU model without AVX512_BF16; every create_*_cpuid entry point of the copy is
#   redirected to create_sapphire_rapids_cpuid (a 5-byte jmp), whose model has it.
# Known emulator defect: its VCVTNE2PS2BF16 writes the second source's conversion into both
# halves; check_kernels.py reports the packers against the documented instruction (they fail
# there) and against a model of the defect (they must match bit for bit).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip install -q --target "$work/py" bochscpu-python==0.4.0 numpy
python3 - "$work/py/bochscpu/_bochscpu.cpython-"*"-x86_64-linux-gnu.so" <<'PY'
import struct, subprocess, sys
path = sys.argv[1]
syms = {}
for line in subprocess.run(["nm", "-D", path], capture_output=True, text=True).stdout.splitlines():
    parts = line.split()
    if len(parts) == 3 and "create_" in parts[2] and parts[2].endswith("_cpuidP8BX_CPU_C"):
        syms[parts[2]] = int(parts[0], 16)
data = bytearray(open(path, "rb").read())
target = syms["_Z28create_sapphire_rapids_cpuidP8BX_CPU_C"]
# The text segment's file offsets equal its addresses in this build.
for name, at in syms.items():
    if at != target:
        data[at:at + 5] = b"\xe9" + struct.pack("<i", target - (at + 5))
open(path, "wb").write(data)
PY
gcc -shared -fPIC -O2 "$here/glibc_shim.c" -o "$work/libshim.so"
rustc --edition 2021 -C opt-level=3 --crate-type=cdylib -C panic=abort "$here/shims.rs" -o "$work/libkern.so"
cd "$here"
LD_PRELOAD="$work/libshim.so" PYTHONPATH="$work/py" python3 check_kernels.py "$work/libkern.so"
