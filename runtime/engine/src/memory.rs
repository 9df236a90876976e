//! Resident memory of this process, split into anonymous pages (heap, copies of weights) and
//! file-backed pages (memory-mapped model files), as Linux reports them in `/proc/self/status`.

use serde::Serialize;

/// Resident set sizes in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Resident {
    /// `RssAnon`: anonymous memory (heap, stacks, dequantized weights).
    pub anon_bytes: u64,
    /// `RssFile`: file-backed memory (mapped model files, the binary).
    pub file_bytes: u64,
}

/// Reads `/proc/self/status`; zeros where it is unavailable (not Linux).
pub fn resident() -> Resident {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    };
    Resident {
        anon_bytes: field("RssAnon:"),
        file_bytes: field("RssFile:"),
    }
}

/// Gives memory the allocator holds but no longer uses back to the system (glibc keeps freed
/// heap pages resident; loading a model frees many short-lived buffers). A no-op elsewhere.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim only returns free heap pages to the kernel; it takes no
        // pointers and is safe to call at any time from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}
