/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

import vendor.dmabuf.BufferRef;

/** DMA-BUF memory of one process, with dmabuf_rss / dmabuf_pss / hwm semantics. */
@VintfStability
parcelable ProcessMemory {
    int pid;
    int uid;
    @utf8InCpp String name;
    /** Sum of the full sizes of the distinct buffers the process references. */
    long rssBytes;
    /** Sum over its buffers of size / number of referencing processes. */
    long pssBytes;
    /** Highest rssBytes observed (at allocation, report and periodic scan) since reset. */
    long hwmBytes;
    BufferRef[] buffers;
    /** False when the process's fds/maps could not be read; then error says why. */
    boolean readable;
    @utf8InCpp String error;
}
