//! Memory: how much this machine (or its container) has free, and buffers allocated so that a
//! failure is an error of the run that asked, never an abort of the whole process.
//!
//! Rust aborts the process when an allocation fails (`vec![0.0; n]` with too large an `n`), and
//! a server that trains several runs must not lose them all to one that asks too much. So a
//! run's big buffers (parameters, gradients, the optimizer's moments, activations) come from
//! [`zeroed`], which reserves with `try_reserve_exact` and reports [`OutOfMemory`] instead.
//! Before that, [`crate::runs::check_memory`] compares an estimate of the run's needs with
//! [`available`], so that a run that would only fail later, when the kernel finds no page for
//! memory it had promised, is refused before it starts.

/// An allocation the system refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot allocate {} for {what}: the system has not that much memory free; choose a smaller n_embd, n_layer, block_size or batch_size, or a text with fewer distinct characters", bytes_text(*bytes))]
pub struct OutOfMemory {
    pub bytes: u64,
    pub what: &'static str,
}

/// `len` zeros (or defaults) in a new vector, or [`OutOfMemory`] if the system refuses them.
pub fn zeroed<T: Clone + Default>(len: usize, what: &'static str) -> Result<Vec<T>, OutOfMemory> {
    let mut v = Vec::new();
    let bytes = (len as u64).saturating_mul(std::mem::size_of::<T>() as u64);
    v.try_reserve_exact(len)
        .map_err(|_| OutOfMemory { bytes, what })?;
    v.resize(len, T::default());
    Ok(v)
}

/// Bytes as a person reads them: 1.1 GiB, 350 MiB, 12 KiB.
pub fn bytes_text(bytes: u64) -> String {
    const K: f64 = 1024.0;
    let b = bytes as f64;
    if b >= K * K * K {
        format!("{:.1} GiB", b / (K * K * K))
    } else if b >= K * K {
        format!("{:.0} MiB", b / (K * K))
    } else {
        format!("{:.0} KiB", (b / K).ceil())
    }
}

/// Gives the memory this process has freed back to the system, where the allocator keeps it
/// otherwise (glibc's). A training frees hundreds of megabytes in pieces of many sizes from
/// several threads, and glibc keeps most of it for later allocations: `chargpt serve` grew from
/// 18 MB to 200-500 MB over 20 trainings and stayed there, although nothing of those runs was
/// still in use (`malloc_trim` brought the same process back to 20 MB). Costs a few
/// milliseconds; call it when a large piece of work has ended, not in a loop.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's heaps to the system; it reads and
    // changes nothing the program holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The memory this process can still take, in bytes, where the system says: on Linux the
/// kernel's estimate of what is available without swapping (`MemAvailable`), or less where a
/// container's memory limit (cgroup v2 or v1) leaves less; on macOS and Windows what the system
/// reports available (free plus reclaimable pages); in WebAssembly (a browser tab) what its 32-bit
/// address space leaves, 4 GiB less the memory the module already has; `None` elsewhere
/// ("unknown on this system": nothing is refused for memory then, and a failed allocation is
/// still only that run's error).
pub fn available() -> Option<u64> {
    #[cfg(target_arch = "wasm32")]
    {
        // memory.size counts 64 KiB pages. The browser may give less than 4 GiB in the end (a
        // failed grow is then the allocation's error), but never more.
        let held = core::arch::wasm32::memory_size(0) as u64 * 65_536;
        Some(WASM32_MEMORY.saturating_sub(held))
    }
    #[cfg(target_os = "linux")]
    {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
        let machine = meminfo
            .as_deref()
            .and_then(|m| meminfo_field(m, "MemAvailable:"));
        let container = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|groups| cgroup_room(&groups, &|p| std::fs::read_to_string(p).ok()));
        match (machine, container) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    #[cfg(target_os = "macos")]
    {
        use sysinfo::{MemoryRefreshKind, RefreshKind, System};
        let what = RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram());
        let system = System::new_with_specifics(what).ok()?;
        Some(system.available_memory()).filter(|&b| b > 0)
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::System::SystemInformation::{GlobalMemoryStatusEx, MEMORYSTATUSEX};
        // SAFETY: the structure is plain data, its length set as the call requires.
        unsafe {
            let mut status: MEMORYSTATUSEX = std::mem::zeroed();
            status.dwLength = std::mem::size_of::<MEMORYSTATUSEX>() as u32;
            (GlobalMemoryStatusEx(&mut status) != 0).then_some(status.ullAvailPhys)
        }
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "macos",
        windows,
        target_arch = "wasm32"
    )))]
    None
}

/// The most memory a wasm32 module can have: its addresses are 32 bits.
pub const WASM32_MEMORY: u64 = 4 << 30;

/// The most memory this process has held resident so far, in bytes: `VmHWM` on Linux, the
/// maximum resident set size on macOS (`getrusage`), the peak working set on Windows; `None`
/// elsewhere.
pub fn peak_resident() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        meminfo_field(&status, "VmHWM:")
    }
    #[cfg(target_os = "macos")]
    {
        // SAFETY: getrusage fills the plain structure it is given.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            // macOS counts ru_maxrss in bytes (Linux in kilobytes).
            (libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0).then_some(usage.ru_maxrss as u64)
        }
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::System::ProcessStatus::{
            GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS,
        };
        use windows_sys::Win32::System::Threading::GetCurrentProcess;
        // SAFETY: the structure is plain data, its size passed as the call requires; the
        // pseudo-handle of the current process needs no closing.
        unsafe {
            let mut counters: PROCESS_MEMORY_COUNTERS = std::mem::zeroed();
            let size = std::mem::size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
            (GetProcessMemoryInfo(GetCurrentProcess(), &mut counters, size) != 0)
                .then_some(counters.PeakWorkingSetSize as u64)
        }
    }
    #[cfg(target_arch = "wasm32")]
    {
        // Wasm memory only grows: its size now is its peak.
        Some(core::arch::wasm32::memory_size(0) as u64 * 65_536)
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "macos",
        windows,
        target_arch = "wasm32"
    )))]
    None
}

/// A `/proc/meminfo` (or `/proc/self/status`) field, in kB there, in bytes.
#[cfg(any(target_os = "linux", test))]
fn meminfo_field(meminfo: &str, name: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The room left under this process's cgroup memory limit (limit minus usage), given the text of
/// `/proc/self/cgroup` and a reader of files; `None` without a limit. cgroup v2 keeps it in
/// `memory.max` and `memory.current` of the group's directory, v1 in `memory.limit_in_bytes`
/// and `memory.usage_in_bytes` of the memory controller's.
#[cfg(any(target_os = "linux", test))]
fn cgroup_room(groups: &str, read: &dyn Fn(&str) -> Option<String>) -> Option<u64> {
    let number = |path: String| -> Option<u64> { read(&path)?.trim().parse().ok() };
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_end_matches('/');
        let room = if controllers.is_empty() {
            // v2: "max" (no limit) does not parse, and leaves `None`.
            let dir = format!("/sys/fs/cgroup{path}");
            number(format!("{dir}/memory.max")).zip(number(format!("{dir}/memory.current")))
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = format!("/sys/fs/cgroup/memory{path}");
            number(format!("{dir}/memory.limit_in_bytes"))
                .zip(number(format!("{dir}/memory.usage_in_bytes")))
                // v1 writes "no limit" as a number near 2^63.
                .filter(|&(limit, _)| limit < 1 << 60)
        } else {
            None
        };
        if let Some((limit, used)) = room {
            return Some(limit.saturating_sub(used));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        target_arch = "wasm32",
        ignore = "WebAssembly's 4 GiB: the test's size is one the allocator tries, and aborts"
    )]
    fn an_impossible_allocation_is_an_error_not_an_abort() {
        let e = zeroed::<f32>(usize::MAX / 8, "a test").unwrap_err();
        assert_eq!(e.what, "a test");
        assert!(e.to_string().starts_with("cannot allocate "), "{e}");
        let v = zeroed::<f32>(5, "five").unwrap();
        assert_eq!(v, vec![0.0; 5]);
    }

    #[test]
    fn the_cgroup_limit_leaves_limit_minus_usage() {
        let files = |p: &str| -> Option<String> {
            match p {
                "/sys/fs/cgroup/box/memory.max" => Some("1073741824\n".into()),
                "/sys/fs/cgroup/box/memory.current" => Some("73741824\n".into()),
                "/sys/fs/cgroup/free/memory.max" => Some("max\n".into()),
                "/sys/fs/cgroup/free/memory.current" => Some("5\n".into()),
                "/sys/fs/cgroup/memory/old/memory.limit_in_bytes" => Some("2000\n".into()),
                "/sys/fs/cgroup/memory/old/memory.usage_in_bytes" => Some("500\n".into()),
                _ => None,
            }
        };
        assert_eq!(cgroup_room("0::/box\n", &files), Some(1_000_000_000));
        assert_eq!(cgroup_room("0::/free\n", &files), None);
        assert_eq!(cgroup_room("3:cpu:/x\n4:memory:/old\n", &files), Some(1500));
        assert_eq!(cgroup_room("", &files), None);
    }

    #[test]
    fn meminfo_reads_available_not_total() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2000000 kB\n";
        assert_eq!(meminfo_field(text, "MemAvailable:"), Some(2_048_000_000));
        #[cfg(any(target_os = "linux", target_os = "macos", windows))]
        {
            assert!(available().is_some_and(|b| b > 0));
            let peak = peak_resident().unwrap_or(0);
            assert!(peak > 1 << 20, "peak resident memory {peak}");
        }
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes_text(1_134_000_000), "1.1 GiB");
        assert_eq!(bytes_text(350 << 20), "350 MiB");
        assert_eq!(bytes_text(1000), "1 KiB");
    }
}
