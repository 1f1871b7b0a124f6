/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

/** A chunk of one rendered dump (IDmaBufAllocator.renderDumpChunk). */
@VintfStability
parcelable DumpChunk {
    /** Names the rendered dump; pass it back to read the next chunk. */
    long snapshotId;
    /** Bytes of the whole dump. */
    long totalBytes;
    /** Where data starts in the whole dump. */
    long offset;
    byte[] data;
    boolean done;
}
