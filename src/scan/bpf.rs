//! Placeholder until the BPF loader lands (branch wip-bpf replaces this file).
use std::io;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelBuffer {
    pub inode: u64,
    pub size: u64,
    pub exporter: String,
    pub name: String,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdRef {
    pub tgid: i32,
    pub fd: u32,
    pub inode: u64,
    pub size: u64,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRef {
    pub tgid: i32,
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub inode: u64,
}
#[derive(Debug)]
pub struct BpfError(pub String);
impl std::fmt::Display for BpfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
pub struct BpfIters;
impl BpfIters {
    pub fn load() -> Result<BpfIters, BpfError> {
        Err(BpfError("BPF loader not built".into()))
    }
    pub fn has_buffer_list(&self) -> bool {
        false
    }
    pub fn buffers(&self) -> io::Result<Vec<KernelBuffer>> {
        Err(io::ErrorKind::Unsupported.into())
    }
    pub fn fd_refs(&self) -> io::Result<Vec<FdRef>> {
        Err(io::ErrorKind::Unsupported.into())
    }
    pub fn map_refs(&self) -> io::Result<Vec<MapRef>> {
        Err(io::ErrorKind::Unsupported.into())
    }
    pub fn missing(&self) -> Vec<&'static str> {
        vec![]
    }
}
pub fn read_pinned_buffers(_path: &Path) -> io::Result<Vec<KernelBuffer>> {
    Err(io::ErrorKind::Unsupported.into())
}
