/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

/** Totals per owning uid (buffers allocated through this service). */
@VintfStability
parcelable OwnerTotal {
    int uid;
    int count;
    long bytes;
}
