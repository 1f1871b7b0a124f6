/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

/** Totals per heap or exporter. */
@VintfStability
parcelable HeapTotal {
    @utf8InCpp String exporter;
    int count;
    long bytes;
}
