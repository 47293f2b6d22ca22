#!/usr/bin/env bash
# Builds the static site into web/dist/: the page of `chargpt serve` (assets/web/) with its
# tab back end, and chargpt's engine compiled to WebAssembly (SIMD128 on). Any static host
# serves it, e.g.
#     bash web/build.sh && python3 -m http.server -d web/dist
# then open http://localhost:8000/. Needs the Rust toolchain (rustup); installs the
# wasm32-unknown-unknown target and wasm-bindgen-cli at the version Cargo.lock pins when
# they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
dist=web/dist

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
# wasm-bindgen's generated glue must match the crate's version exactly.
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if [ -z "$version" ]; then
    echo "web/build.sh: no wasm-bindgen in Cargo.lock; run 'cargo update -p chargpt-web' first" >&2
    exit 1
fi
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
    echo "installing wasm-bindgen-cli $version (once; about two minutes)" >&2
    cargo install wasm-bindgen-cli --version "$version"
fi

# +simd128: gemm's wasm kernels and our portable lanes (src/kernels/simd.rs) use 128-bit SIMD,
# which every browser of the last few years runs.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+simd128" \
    cargo build --release -p chargpt-web --target wasm32-unknown-unknown
target_dir=${CARGO_TARGET_DIR:-target}
rm -rf "$dist"
mkdir -p "$dist/pkg" "$dist/source"
wasm-bindgen --target web --no-typescript --out-dir "$dist/pkg" \
    "$target_dir/wasm32-unknown-unknown/release/chargpt_web.wasm"

cp -r assets/web/. "$dist/"
# The same page as `chargpt serve`'s; this line tells api.js to run the engine in the tab.
sed -i 's|<meta charset="utf-8">|<meta charset="utf-8">\n  <meta name="chargpt-backend" content="tab">|' \
    "$dist/index.html"
# The project's files the page links to (read.html shows them), as the server embeds them.
sed -n '/^const SOURCES/,/^];/p' src/serve/assets.rs | grep -o '"[^"]*"' | tr -d '"' |
    grep -v '^\.\./' | while read -r file; do
        mkdir -p "$dist/source/$(dirname "$file")"
        cp "$file" "$dist/source/$file"
    done
echo "built $dist ($(du -sh "$dist" | cut -f1); engine $(du -h "$dist/pkg/chargpt_web_bg.wasm" | cut -f1))"
