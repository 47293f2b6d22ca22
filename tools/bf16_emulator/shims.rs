#![no_std]
#[panic_handler] fn p(_: &core::panic::PanicInfo) -> ! { loop {} }
#[path = "../../src/kernels/matmul_bf16/avx512.rs"]
mod avx512;
#[no_mangle]
pub unsafe extern "C" fn emu_kernel(a: *const u32, b: *const u32, c: *mut f32, params: *const u64) {
    let p = core::slice::from_raw_parts(params, 5);
    avx512::kernel(p[0] as usize, a, b, c, p[1] as usize, p[2] as usize, p[3] as usize, p[4] != 0)
}
#[no_mangle]
pub unsafe extern "C" fn emu_interleave(dst: *mut u32, r0: *const f32, r1: *const f32, params: *const u64) {
    let p = core::slice::from_raw_parts(params, 2);
    avx512::interleave_rows(dst, r0, if p[1] != 0 { Some(r1) } else { None }, p[0] as usize)
}
#[no_mangle]
pub unsafe extern "C" fn emu_pairs(dst: *mut u32, x: *const f32, params: *const u64) {
    let p = core::slice::from_raw_parts(params, 2);
    avx512::pairs_of_row(dst, p[0] as usize, x, p[1] as usize)
}
