/*
 * android.hardware.memtrack, version 1: see IMemtrack.aidl. Types do not
 * overlap: a buffer is counted under one type only.
 */
package android.hardware.memtrack;

@VintfStability
@Backing(type="int")
enum MemtrackType {
    OTHER = 0,
    /** GPU-private memory (not DMA-BUFs). */
    GL = 1,
    /** With FLAG_SMAPS_UNACCOUNTED: the PSS of the process's DMA-BUFs. */
    GRAPHICS = 2,
    MULTIMEDIA = 3,
    CAMERA = 4,
}
