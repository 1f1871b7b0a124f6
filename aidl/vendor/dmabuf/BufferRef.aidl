/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

/** One buffer as seen from one process. */
@VintfStability
parcelable BufferRef {
    long inode;
    long size;
    /** The heap (for buffers this service allocated) or the exporter name from fdinfo. */
    @utf8InCpp String exporter;
    @utf8InCpp String name;
    /** Uid that allocated it through this service; -1 when unknown. */
    int ownerUid;
    /** Pid that allocated it through this service; -1 when unknown. */
    int ownerPid;
    /** This process's fds of the buffer. */
    int fdRefs;
    /** This process's mappings of the buffer. */
    int mapRefs;
    /** Processes that reference the buffer (fd or mapping). */
    int sharedWith;
}
