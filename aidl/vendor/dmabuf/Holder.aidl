/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

/** A process referencing a buffer. */
@VintfStability
parcelable Holder {
    int pid;
    int uid;
    @utf8InCpp String name;
    int fdRefs;
    int mapRefs;
}
