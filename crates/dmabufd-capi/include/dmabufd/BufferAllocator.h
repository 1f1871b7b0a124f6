// A C++ RAII wrapper over the dmabufd C API, shaped like libdmabufheap's
// BufferAllocator, so code written against that can switch by changing
// the include and the namespace: Alloc(heap, len, flags) returns an fd the
// caller owns (negative on failure), CpuSyncStart/CpuSyncEnd bracket CPU
// access. The allocator owns its connection: it connects when constructed
// and disconnects when destroyed; it may be moved, not copied, and used
// from many threads at once.
#pragma once

#include <dmabufd.h>

#include <errno.h>
#include <linux/dma-buf.h>
#include <sys/ioctl.h>

#include <string>
#include <unordered_set>
#include <utility>

namespace dmabufd {

enum SyncType { kSyncRead = DMA_BUF_SYNC_READ, kSyncWrite = DMA_BUF_SYNC_WRITE, kSyncReadWrite = DMA_BUF_SYNC_RW };

class BufferAllocator {
  public:
    // Connects the way every dmabufd client does ($DMABUFD_SOCKET, kernel
    // binder, the default socket). Check with IsConnected().
    BufferAllocator() { Connect(nullptr); }
    // Connects over RPC binder on the Unix socket `socket_path`.
    explicit BufferAllocator(const std::string& socket_path) { Connect(socket_path.c_str()); }
    ~BufferAllocator() { dmabufd_disconnect(client_); }

    BufferAllocator(const BufferAllocator&) = delete;
    BufferAllocator& operator=(const BufferAllocator&) = delete;
    BufferAllocator(BufferAllocator&& other) noexcept
        : client_(std::exchange(other.client_, nullptr)), connect_error_(std::move(other.connect_error_)) {}
    BufferAllocator& operator=(BufferAllocator&& other) noexcept {
        if (this != &other) {
            dmabufd_disconnect(client_);
            client_ = std::exchange(other.client_, nullptr);
            connect_error_ = std::move(other.connect_error_);
        }
        return *this;
    }

    bool IsConnected() const { return client_ != nullptr; }

    // A new buffer's fd (close-on-exec, the caller's to close), or the
    // negated dmabufd error code (-DMABUFD_UNKNOWN_HEAP, ...); LastError()
    // says why. `heap_flags` are dmabufd flags (DMABUFD_FLAG_NO_CPU_ACCESS);
    // `legacy_align` is ignored, as in libdmabufheap. The buffer is named
    // after the heap, as libdmabufheap does.
    int Alloc(const std::string& heap_name, size_t len, unsigned int heap_flags = 0,
              size_t legacy_align = 0) {
        (void)legacy_align;
        return AllocNamed(heap_name, len, heap_name, heap_flags);
    }

    // Alloc with a buffer name of the caller's choice (1..31 printable bytes).
    int AllocNamed(const std::string& heap_name, size_t len, const std::string& name,
                   unsigned int heap_flags = 0) {
        if (!client_) return -DMABUFD_E_UNAVAILABLE;
        int fd = -1;
        int rc = dmabufd_alloc(client_, heap_name.c_str(), len, name.c_str(),
                               static_cast<int32_t>(heap_flags), &fd, nullptr);
        return rc == DMABUFD_OK ? fd : -rc;
    }

    // From "system", asking for an uncached variant when no CPU access is needed.
    int AllocSystem(bool cpu_access_needed, size_t len, unsigned int heap_flags = 0,
                    size_t legacy_align = 0) {
        if (!cpu_access_needed) heap_flags |= DMABUFD_FLAG_NO_CPU_ACCESS;
        return Alloc("system", len, heap_flags, legacy_align);
    }

    // The heaps the service serves, by name (aliases not included).
    std::unordered_set<std::string> GetDmabufHeapList() {
        std::unordered_set<std::string> names;
        if (!client_) return names;
        size_t n = 0;
        int rc = dmabufd_heaps(client_, nullptr, 0, &n);
        if (rc != DMABUFD_OK && rc != DMABUFD_E_BUFFER_TOO_SMALL) return names;
        std::basic_string<char> storage(n * sizeof(dmabufd_heap_info), '\0');
        auto* heaps = reinterpret_cast<dmabufd_heap_info*>(storage.data());
        if (n > 0 && dmabufd_heaps(client_, heaps, n, &n) == DMABUFD_OK)
            for (size_t i = 0; i < n; i++) names.insert(heaps[i].name);
        return names;
    }

    // DMA_BUF_IOCTL_SYNC start/end: 0 or -errno. A memfd-heap buffer is
    // not a dma-buf and needs no sync: 0.
    static int CpuSyncStart(unsigned int dmabuf_fd, SyncType sync_type = kSyncRead) {
        return Sync(dmabuf_fd, DMA_BUF_SYNC_START | sync_type);
    }
    static int CpuSyncEnd(unsigned int dmabuf_fd, SyncType sync_type = kSyncRead) {
        return Sync(dmabuf_fd, DMA_BUF_SYNC_END | sync_type);
    }

    // Why the last call on this thread failed ("" after a success); why
    // the connection failed when not connected.
    std::string LastError() const {
        return client_ ? std::string(dmabufd_last_error()) : connect_error_;
    }

  private:
    void Connect(const char* socket_path) {
        if (dmabufd_connect(socket_path, &client_) != DMABUFD_OK) {
            client_ = nullptr;
            connect_error_ = dmabufd_last_error();
        }
    }

    static int Sync(unsigned int fd, unsigned long long flags) {
        struct dma_buf_sync sync = {flags};
        int rc;
        do {
            rc = ioctl(static_cast<int>(fd), DMA_BUF_IOCTL_SYNC, &sync);
        } while (rc < 0 && (errno == EINTR || errno == EAGAIN));
        if (rc < 0) return errno == ENOTTY ? 0 : -errno;
        return 0;
    }

    dmabufd_client* client_ = nullptr;
    std::string connect_error_;
};

}  // namespace dmabufd
