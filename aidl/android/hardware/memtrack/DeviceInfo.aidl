/*
 * android.hardware.memtrack, version 1: see IMemtrack.aidl.
 */
package android.hardware.memtrack;

@VintfStability
parcelable DeviceInfo {
    int id;
    @utf8InCpp String name;
}
