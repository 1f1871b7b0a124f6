/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

import vendor.dmabuf.Holder;

/** One live buffer, with who allocated it and who holds it. */
@VintfStability
parcelable BufferInfo {
    long inode;
    long size;
    @utf8InCpp String exporter;
    @utf8InCpp String name;
    /** -1 when the buffer was not allocated through this service. */
    int ownerUid;
    int ownerPid;
    @utf8InCpp String ownerName;
    /** Milliseconds since the Unix epoch; 0 when unknown. */
    long allocatedAtMs;
    Holder[] holders;
}
