//! Refusals over kernel binder: each ErrorCode from the input that should
//! produce it, and the service still answering afterwards.

use dmabufd::aidl::vendor::dmabuf::ErrorCode::ErrorCode;
use dmabufd::client::error_code_name;

use crate::app::{self, RoleResult, APP_SMALL_QUOTA};
use crate::ensure;
use crate::harness::{Case, Outcome};
use crate::support::{
    connect, expect_code, meminfo_bytes, oom_kills_in_kernel_log, record_code, seen_codes,
    service_answers, KIB, MIB,
};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "unknown_heap_is_refused_with_unknown_heap",
            run: unknown_heap_is_refused_with_unknown_heap,
        },
        Case {
            name: "size_zero_and_minus_one_are_refused_with_invalid_size",
            run: size_zero_and_minus_one_are_refused_with_invalid_size,
        },
        Case {
            name: "size_above_the_heap_max_is_refused_with_invalid_size",
            run: size_above_the_heap_max_is_refused_with_invalid_size,
        },
        Case {
            name: "name_of_32_bytes_is_refused_with_invalid_name_31_accepted",
            run: name_of_32_bytes_is_refused_with_invalid_name_31_accepted,
        },
        Case {
            name: "unknown_flags_are_refused_with_invalid_flags",
            run: unknown_flags_are_refused_with_invalid_flags,
        },
        Case {
            name: "allocation_beyond_the_uid_quota_is_refused_with_quota_exceeded",
            run: allocation_beyond_the_uid_quota_is_refused_with_quota_exceeded,
        },
        Case {
            name: "request_larger_than_ram_is_refused_without_any_oom_kill",
            run: request_larger_than_ram_is_refused_without_any_oom_kill,
        },
        Case {
            name: "memory_of_a_missing_pid_is_refused_with_no_such_process",
            run: memory_of_a_missing_pid_is_refused_with_no_such_process,
        },
    ]
}

/// Runs after every case that produces error codes (this module's and the
/// paged reports'): judges what they produced.
pub fn coverage_cases() -> Vec<Case> {
    vec![Case {
        name: "every_error_code_was_produced_over_kernel_binder",
        run: every_error_code_was_produced_over_kernel_binder,
    }]
}

pub fn roles() -> Vec<(&'static str, app::Role)> {
    vec![("quota", quota_role)]
}

fn unknown_heap_is_refused_with_unknown_heap() -> Outcome {
    let alloc = connect()?;
    for heap in ["no-such-heap", "", "system/../udmabuf"] {
        expect_code(
            alloc.allocate(heap, 4 * KIB, "vts"),
            ErrorCode::UNKNOWN_HEAP,
            &format!("heap {heap:?}"),
        )?;
        service_answers(&alloc)?;
    }
    Ok(())
}

fn size_zero_and_minus_one_are_refused_with_invalid_size() -> Outcome {
    let alloc = connect()?;
    for size in [0i64, -1, i64::MIN] {
        expect_code(
            alloc.allocate_raw("system", size, "vts", 0),
            ErrorCode::INVALID_SIZE,
            &format!("size {size}"),
        )?;
        service_answers(&alloc)?;
    }
    Ok(())
}

fn size_above_the_heap_max_is_refused_with_invalid_size() -> Outcome {
    let alloc = connect()?;
    let heaps = alloc.heaps().map_err(|e| e.to_string())?;
    for heap in ["system", "udmabuf"] {
        let max = heaps
            .iter()
            .find(|h| h.name == heap)
            .map(|h| h.maxAllocationSize)
            .ok_or_else(|| format!("no heap {heap}"))?;
        expect_code(
            alloc.allocate_raw(heap, max + 1, "vts", 0),
            ErrorCode::INVALID_SIZE,
            &format!("{heap}: max {max} + 1"),
        )?;
        expect_code(
            alloc.allocate_raw(heap, i64::MAX, "vts", 0),
            ErrorCode::INVALID_SIZE,
            &format!("{heap}: i64::MAX"),
        )?;
        service_answers(&alloc)?;
    }
    Ok(())
}

fn name_of_32_bytes_is_refused_with_invalid_name_31_accepted() -> Outcome {
    let alloc = connect()?;
    let long = "n".repeat(32);
    expect_code(
        alloc.allocate("system", 4 * KIB, &long),
        ErrorCode::INVALID_NAME,
        "32-byte name",
    )?;
    expect_code(
        alloc.allocate("system", 4 * KIB, "bad\nname"),
        ErrorCode::INVALID_NAME,
        "name with a newline",
    )?;
    service_answers(&alloc)?;
    let ok = "m".repeat(31);
    let buf = alloc
        .allocate("system", 4 * KIB, &ok)
        .map_err(|e| format!("31-byte name refused: {e}"))?;
    ensure!(
        buf.name().map_err(|e| e.to_string())? == ok,
        "31-byte name not kept whole"
    );
    Ok(())
}

fn unknown_flags_are_refused_with_invalid_flags() -> Outcome {
    let alloc = connect()?;
    for flags in [2, 0x100, i32::MIN, -1] {
        expect_code(
            alloc.allocate_with_flags("system", 4 * KIB, "vts", flags),
            ErrorCode::INVALID_FLAGS,
            &format!("flags {flags:#x}"),
        )?;
        service_answers(&alloc)?;
    }
    Ok(())
}

/// uid 10003 has 4 buffers / 1 MiB in the VM's config.
fn allocation_beyond_the_uid_quota_is_refused_with_quota_exceeded() -> Outcome {
    let out = app::run_as(APP_SMALL_QUOTA, "quota", &[])?;
    ensure!(out == "ok", "quota role printed {out:?}");
    record_code(ErrorCode::QUOTA_EXCEEDED);
    Ok(())
}

fn quota_role(_: &[&str]) -> RoleResult {
    let alloc = connect()?;
    // Bytes: one buffer above 1 MiB.
    expect_code(
        alloc.allocate("system", MIB + 4 * KIB, "vts-quota-big"),
        ErrorCode::QUOTA_EXCEEDED,
        "2 MiB for a 1 MiB quota",
    )?;
    // Count: 4 buffers fit, the 5th does not.
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            alloc
                .allocate("system", 4 * KIB, &format!("vts-quota-{i}"))
                .map_err(|e| format!("buffer {i} within the quota refused: {e}"))?,
        );
    }
    expect_code(
        alloc.allocate("system", 4 * KIB, "vts-quota-5"),
        ErrorCode::QUOTA_EXCEEDED,
        "5th buffer of a 4-buffer quota",
    )?;
    service_answers(&alloc)?;
    Ok("ok".into())
}

fn request_larger_than_ram_is_refused_without_any_oom_kill() -> Outcome {
    let alloc = connect()?;
    let before = oom_kills_in_kernel_log()?;
    let ram = meminfo_bytes("MemTotal")?;
    match alloc.allocate("system", 1 << 40, "vts-huge") {
        Ok(b) => return Err(format!("1 TiB was allocated: {} bytes", b.size())),
        Err(e) => ensure!(
            e.error_code().is_some(),
            "1 TiB refused without an ErrorCode: {e}"
        ),
    }
    service_answers(&alloc)?;
    // Under the VM's 4 GiB heap max, so only memory itself can refuse it.
    expect_code(
        alloc.allocate("system", ram + MIB, "vts-huge"),
        ErrorCode::NO_MEMORY,
        "RAM + 1 MiB",
    )?;
    service_answers(&alloc)?;
    let after = oom_kills_in_kernel_log()?;
    ensure!(
        after.len() == before.len(),
        "the kernel log reports OOM kills: {:?}",
        &after[before.len()..]
    );
    // And memory is usable afterwards.
    alloc
        .allocate("system", 32 * MIB, "vts-after-huge")
        .map_err(|e| format!("32 MiB after the refusals: {e}"))?;
    Ok(())
}

fn memory_of_a_missing_pid_is_refused_with_no_such_process() -> Outcome {
    let alloc = connect()?;
    // pid_max is at most 4194304; this pid cannot exist.
    expect_code(
        alloc.process_memory(i32::MAX),
        ErrorCode::NO_SUCH_PROCESS,
        "getProcessMemory(i32::MAX)",
    )?;
    service_answers(&alloc)
}

fn every_error_code_was_produced_over_kernel_binder() -> Outcome {
    let seen = seen_codes();
    let missing: Vec<String> = [
        ErrorCode::UNKNOWN_HEAP,
        ErrorCode::INVALID_SIZE,
        ErrorCode::INVALID_NAME,
        ErrorCode::INVALID_FLAGS,
        ErrorCode::QUOTA_EXCEEDED,
        ErrorCode::NO_MEMORY,
        ErrorCode::NO_SUCH_PROCESS,
        ErrorCode::REPORT_TOO_LARGE,
        ErrorCode::STALE_SNAPSHOT,
    ]
    .into_iter()
    .filter(|c| !seen.contains(&c.0))
    .map(error_code_name)
    .collect();
    ensure!(missing.is_empty(), "never produced: {}", missing.join(", "));
    Ok(())
}
