#!/usr/bin/env python3
"""Does the tab's engine really vectorise? Counts WebAssembly SIMD128 arithmetic in the built
site's module, over all functions and in those whose names hold each hot kernel's word.

    bash web/build.sh && python3 tools/wasm_simd.py [web/dist/pkg/chargpt_web_bg.wasm]

Needs wasm2wat (Debian's wabt). Inlining folds many kernels into their callers, so a kernel
without its own line may still run vector code inside another function.
"""
import collections
import re
import subprocess
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "web/dist/pkg/chargpt_web_bg.wasm"
wat = subprocess.run(["wasm2wat", path], check=True, capture_output=True, text=True).stdout
ops = collections.Counter(re.findall(r"\b((?:f32x4|i32x4|v128)\.[a-z_]+)", wat))
print(f"{path}: {sum(ops.values())} SIMD128 instructions; the commonest:")
for op, n in ops.most_common(8):
    print(f"  {n:6d} {op}")
funcs = [(f.split(" ", 1)[0], f) for f in re.split(r"\n  \(func ", wat)[1:]]
arith = re.compile(r"f32x4\.(?:mul|add|sub|div|max|min|pmax|pmin)")
print(f"{len(funcs)} functions, {sum(1 for _, f in funcs if arith.search(f))} with f32x4 arithmetic")
for word in ["gemm", "simd", "attention", "layernorm", "rmsnorm", "softmax", "matmul", "adamw"]:
    hits = [(n, len(arith.findall(f))) for n, f in funcs if word in n.lower()]
    vector = sum(1 for _, k in hits if k)
    print(f"  {word:10s} {len(hits):4d} functions, {vector:4d} with f32x4 arithmetic, {sum(k for _, k in hits):5d} such instructions")
