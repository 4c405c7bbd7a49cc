import CLoupeProcess

/// This process's memory allocator (jemalloc in `loupe`: Package.swift links it).
public enum Allocator {
    /// Freed pages go back to the kernel a few seconds after a burst even while the process
    /// then idles (jemalloc's background purging thread); false without jemalloc.
    @discardableResult
    public static func purgeInBackground() -> Bool { loupe_allocator_background_purge() == 1 }

    /// Every free page back to the kernel now: after start-up, whose one-off buffers (≈ 11 MB in
    /// the lab) jemalloc would otherwise keep as the idle agent's RSS.
    public static func releaseFreeMemory() { loupe_allocator_release_free_memory() }
}
