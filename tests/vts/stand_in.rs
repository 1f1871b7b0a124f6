//! A minimal IDmaBufAllocator that refuses every call. Two uses: the VM
//! harness can be brought up with it (`tests/vm/run.sh --stand-in`) before or
//! without the real service, and the impostor app of the registration case
//! needs some binder object to try to register.

use std::process::ExitCode;

use dmabufd::aidl::vendor::dmabuf::{
    AllocationRequest::AllocationRequest,
    Buffer::Buffer,
    DumpChunk::DumpChunk,
    HeapInfo::HeapInfo,
    IDmaBufAllocator::{BnDmaBufAllocator, IDmaBufAllocator},
    MemoryReport::MemoryReport,
    MemoryReportPage::MemoryReportPage,
    ProcessMemory::ProcessMemory,
    ReportCursor::ReportCursor,
};
use rsbinder::{ExceptionCode, SIBinder, Status};

/// The uid the service runs as in the VM (the policy lets only it add).
pub const SERVICE_UID: u32 = 1100;

pub struct Refuser;

impl rsbinder::Interface for Refuser {
    fn dump(&self, w: &mut dyn std::io::Write, _args: &[String]) -> rsbinder::Result<()> {
        let _ = writeln!(w, "dmabufd stand-in (harness bring-up): serves nothing");
        Ok(())
    }
}

fn refused<T>() -> rsbinder::BinderResult<T> {
    Err(Status::from(ExceptionCode::UnsupportedOperation))
}

impl IDmaBufAllocator for Refuser {
    fn r#getHeaps(&self) -> rsbinder::BinderResult<Vec<HeapInfo>> {
        refused()
    }
    fn r#allocate(&self, _request: &AllocationRequest) -> rsbinder::BinderResult<Buffer> {
        refused()
    }
    fn r#getProcessMemory(&self, _pid: i32) -> rsbinder::BinderResult<ProcessMemory> {
        refused()
    }
    fn r#getMemoryReport(&self) -> rsbinder::BinderResult<MemoryReport> {
        refused()
    }
    fn r#resetHighWaterMark(&self, _pid: i32) -> rsbinder::BinderResult<()> {
        refused()
    }
    fn r#renderDump(&self, _args: &[String]) -> rsbinder::BinderResult<Vec<u8>> {
        refused()
    }
    fn r#allocateBatch(
        &self,
        _request: &AllocationRequest,
        _count: i32,
    ) -> rsbinder::BinderResult<Vec<Buffer>> {
        refused()
    }
    fn r#getMemoryReportPage(
        &self,
        _from: &ReportCursor,
    ) -> rsbinder::BinderResult<MemoryReportPage> {
        refused()
    }
    fn r#renderDumpChunk(
        &self,
        _args: &[String],
        _snapshot_id: i64,
        _offset: i64,
    ) -> rsbinder::BinderResult<DumpChunk> {
        refused()
    }
}

pub fn new_binder() -> SIBinder {
    BnDmaBufAllocator::new_binder(Refuser).as_binder()
}

/// `vts --stand-in-service`: drop to the service uid, register, serve forever.
pub fn main() -> ExitCode {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    if Uid::effective().is_root() {
        let dropped = setgroups(&[])
            .and_then(|_| setgid(Gid::from_raw(SERVICE_UID)))
            .and_then(|_| setuid(Uid::from_raw(SERVICE_UID)));
        if let Err(e) = dropped {
            eprintln!("stand-in: cannot switch to uid {SERVICE_UID}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = rsbinder::ProcessState::init_default() {
        eprintln!("stand-in: no binder driver: {e}");
        return ExitCode::FAILURE;
    }
    rsbinder::ProcessState::start_thread_pool();
    if let Err(e) = rsbinder::hub::add_service(dmabufd::SERVICE_NAME, new_binder()) {
        eprintln!("stand-in: add_service refused: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("stand-in: registered {}", dmabufd::SERVICE_NAME);
    let _ = rsbinder::ProcessState::join_thread_pool();
    ExitCode::SUCCESS
}
