// The C++ BufferAllocator wrapper against a running dmabufd
// (usage: buffer_allocator_test SOCKET). Exits 0 only when every check passed.
#include <dmabufd/BufferAllocator.h>

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <utility>

static int failures = 0;

static void check(bool ok, const char* what, const std::string& detail = "") {
    std::printf("%s: %s%s%s\n", ok ? "ok" : "FAILED", what, detail.empty() ? "" : ": ",
                detail.c_str());
    if (!ok) failures++;
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
        return 2;
    }
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    {
        dmabufd::BufferAllocator nowhere(std::string(argv[1]) + ".absent");
        check(!nowhere.IsConnected() && !nowhere.LastError().empty(),
              "no service at a wrong path", nowhere.LastError());
        check(nowhere.Alloc("system", 4096) == -DMABUFD_E_UNAVAILABLE, "alloc when not connected");
    }

    dmabufd::BufferAllocator first(argv[1]);
    check(first.IsConnected(), "connect", first.LastError());
    // Moving hands the connection over; the moved-from one is empty.
    dmabufd::BufferAllocator allocator(std::move(first));
    check(allocator.IsConnected() && !first.IsConnected(), "move");

    auto heaps = allocator.GetDmabufHeapList();
    check(heaps.count("system") == 1, "heap list has system");

    const size_t len = 16384;
    int fd = allocator.Alloc("system", len);
    check(fd >= 0, "Alloc(system, 16 KiB)", allocator.LastError());
    if (fd < 0) return 1;
    struct stat st;
    check(fstat(fd, &st) == 0 && static_cast<size_t>(st.st_size) == len, "fd size is 16 KiB");
    check(dmabufd::BufferAllocator::CpuSyncStart(fd, dmabufd::kSyncReadWrite) == 0, "CpuSyncStart");
    auto* p = static_cast<unsigned char*>(mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    check(p != MAP_FAILED, "mmap");
    if (p == MAP_FAILED) return 1;
    std::memset(p, 0x5a, len);
    bool same = true;
    for (size_t i = 0; i < len; i++) same &= p[i] == 0x5a;
    check(same, "writes read back");
    munmap(p, len);
    check(dmabufd::BufferAllocator::CpuSyncEnd(fd, dmabufd::kSyncReadWrite) == 0, "CpuSyncEnd");
    close(fd);

    int sys = allocator.AllocSystem(false, 4096);
    check(sys >= 0, "AllocSystem without CPU access", allocator.LastError());
    if (sys >= 0) close(sys);

    int bad = allocator.Alloc("no-such-heap", 4096);
    check(bad == -DMABUFD_UNKNOWN_HEAP && !allocator.LastError().empty(),
          "unknown heap is -DMABUFD_UNKNOWN_HEAP", allocator.LastError());
    check(allocator.AllocNamed("system", 4096, std::string(40, 'n')) == -DMABUFD_INVALID_NAME,
          "a 40-byte name is -DMABUFD_INVALID_NAME");

    std::printf("%d failed\n", failures);
    return failures == 0 ? 0 : 1;
}
