//! Shared by the measuring examples (included with `#[path]`; not an example of its own).

/// This process's peak resident set size (VmHWM), in KiB; 0 where /proc cannot tell.
pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
