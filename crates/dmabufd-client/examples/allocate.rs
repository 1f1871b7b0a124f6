//! Allocate a named buffer, write it, read it back, rename it, and
//! survive a service restart: `cargo run -p dmabufd-client --example
//! allocate` with dmabufd running (DMABUFD_SOCKET names its RPC socket).
use dmabufd_client::sys::SyncDirection;
use dmabufd_client::{Allocator, ErrorKind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let alloc = Allocator::connect()?;
    for heap in alloc.heaps()? {
        println!("heap {} (aliases {:?})", heap.name, heap.aliases);
    }
    let mut buf = match alloc.allocate("system", 1 << 20, "cam-preview") {
        // The service restarted while the call was in flight: nothing was
        // allocated for us and the connection is back, so ask again.
        Err(e) if e.kind() == ErrorKind::ServiceRestarted => {
            alloc.allocate("system", 1 << 20, "cam-preview")?
        }
        r => r?,
    };
    println!(
        "{} bytes, inode {}, from {}",
        buf.size(),
        buf.inode(),
        buf.heap()
    );
    {
        // DMA_BUF_IOCTL_SYNC start now, end when `m` is dropped.
        let mut m = buf.map(SyncDirection::Write)?;
        m.fill(0)?;
        m.write_at(0, b"frame 0")?;
    }
    let mut first = [0u8; 7];
    buf.map(SyncDirection::Read)?.read_at(0, &mut first)?;
    assert_eq!(&first, b"frame 0");
    if buf.is_dmabuf() {
        buf.set_name("cam-preview-2")?; // memfd-heap buffers keep their name
    }
    Ok(()) // dropping `buf` closes this process's reference
}
