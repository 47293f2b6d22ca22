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
pub unsafe extern "C" fn emu_pack_columns(dst: *mut u32, x: *const f32, params: *const u64) {
    let p = core::slice::from_raw_parts(params, 5);
    let (stride, panel_len, ld, width, k) = (p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize, p[4] as usize);
    avx512::pack_columns(dst, stride, panel_len, x, ld, width, k)
}
#[no_mangle]
pub unsafe extern "C" fn emu_pack_rows(dst: *mut u32, x: *const f32, params: *const u64) {
    let p = core::slice::from_raw_parts(params, 4);
    avx512::pack_rows(dst, p[0] as usize, x, p[1] as usize, p[2] as usize, p[3] as usize)
}
