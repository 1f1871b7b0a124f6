/*
 * The C API end to end, against a running dmabufd (usage: alloc_test SOCKET).
 * Lists the heaps, allocates, maps and writes a buffer, passes its fd to a
 * child process over a Unix socket (SCM_RIGHTS) which maps it and reads the
 * bytes back, allocates a batch, and provokes each error code it can.
 * The service is expected to run with a quota of 4 buffers per uid.
 * Prints one line per check; exits 0 only when every check passed.
 */
#define _GNU_SOURCE
#include <dmabufd.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            printf("ok: " __VA_ARGS__);                                    \
        } else {                                                           \
            printf("FAILED (%s:%d): ", __FILE__, __LINE__);                \
            printf(__VA_ARGS__);                                           \
            failures++;                                                    \
        }                                                                  \
        printf("\n");                                                      \
    } while (0)

static unsigned char pattern(size_t i) { return (unsigned char)(i * 7 + 3); }

/* Sends one fd with one byte of data. */
static int send_fd(int sock, int fd) {
    char byte = 'x';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    return sendmsg(sock, &msg, 0) == 1 ? 0 : -1;
}

/* Receives one fd; -1 when none came. */
static int recv_fd(int sock) {
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1) return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS) return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof(int));
    return fd;
}

/* The child: receives the buffer and checks its identity and bytes. */
static int child_reads(int sock, uint64_t inode, size_t size) {
    int fd = recv_fd(sock);
    if (fd < 0) {
        printf("child: no fd received\n");
        return 1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_ino != inode || (size_t)st.st_size != size) {
        printf("child: received inode %llu size %lld, want %llu %zu\n",
               (unsigned long long)st.st_ino, (long long)st.st_size,
               (unsigned long long)inode, size);
        return 1;
    }
    unsigned char *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        printf("child: mmap: %s\n", strerror(errno));
        return 1;
    }
    for (size_t i = 0; i < size; i++) {
        if (p[i] != pattern(i)) {
            printf("child: byte %zu is %#x, want %#x\n", i, p[i], pattern(i));
            return 1;
        }
    }
    munmap(p, size);
    close(fd);
    return 0;
}

static void expect_refusal(dmabufd_client *c, const char *what, const char *heap,
                           uint64_t size, const char *name, int32_t flags, int want) {
    int fd = -1;
    int rc = dmabufd_alloc(c, heap, size, name, flags, &fd, NULL);
    CHECK(rc == want && fd == -1 && strlen(dmabufd_last_error()) > 0,
          "%s: %s (%d), want %s: %s", what, dmabufd_error_name(rc), rc,
          dmabufd_error_name(want), dmabufd_last_error());
    if (fd >= 0) close(fd);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    dmabufd_client *c = NULL;
    int rc = dmabufd_connect(argv[1], &c);
    CHECK(rc == DMABUFD_OK && c != NULL, "connect: %s", dmabufd_last_error());
    if (rc != DMABUFD_OK) return 1;

    /* Heaps: ask how many, then read them. */
    size_t n = 0;
    rc = dmabufd_heaps(c, NULL, 0, &n);
    CHECK(rc == DMABUFD_E_BUFFER_TOO_SMALL && n >= 1, "heaps count: %zu", n);
    dmabufd_heap_info heaps[8];
    rc = dmabufd_heaps(c, heaps, 8, &n);
    int has_system = 0;
    for (size_t i = 0; rc == DMABUFD_OK && i < n; i++)
        has_system |= strcmp(heaps[i].name, "system") == 0;
    CHECK(rc == DMABUFD_OK && has_system, "heaps list system (%zu heaps)", n);

    /* Allocate, map, write. */
    const size_t size = 8192;
    int fd = -1;
    dmabufd_buffer_info info;
    rc = dmabufd_alloc(c, "system", size, "c-test", 0, &fd, &info);
    CHECK(rc == DMABUFD_OK && fd >= 0, "alloc: %s", dmabufd_last_error());
    if (rc != DMABUFD_OK) return 1;
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && (size_t)st.st_size == size && info.size == size &&
              (uint64_t)st.st_ino == info.inode && strcmp(info.heap, "system") == 0,
          "info: size %llu inode %llu heap %s", (unsigned long long)info.size,
          (unsigned long long)info.inode, info.heap);
    unsigned char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(p != MAP_FAILED, "mmap read-write");
    if (p == MAP_FAILED) return 1;
    for (size_t i = 0; i < size; i++) p[i] = pattern(i);
    munmap(p, size);

    /* Pass it to a child over a Unix socket; the child reads it back. */
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        close(fd);
        _exit(child_reads(sv[1], info.inode, size));
    }
    close(sv[1]);
    CHECK(send_fd(sv[0], fd) == 0, "fd sent to child %d", (int)pid);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "child read the bytes back (status %d)", status);
    close(sv[0]);

    /* A batch of two, all fds distinct buffers. */
    int fds[2] = {-1, -1};
    dmabufd_buffer_info infos[2];
    rc = dmabufd_alloc_batch(c, "system", 4096, "c-batch", 0, 2, fds, infos);
    if (rc == DMABUFD_E_EXCEPTION && strstr(dmabufd_last_error(), "not implemented")) {
        /* A service from before allocateBatch was implemented (AIDL v2
           declares it): say so, and hold two buffers the single way. */
        printf("SKIPPED batch: %s\n", dmabufd_last_error());
        rc = dmabufd_alloc(c, "system", 4096, "c-batch", 0, &fds[0], &infos[0]);
        if (rc == DMABUFD_OK) rc = dmabufd_alloc(c, "system", 4096, "c-batch", 0, &fds[1], &infos[1]);
    }
    CHECK(rc == DMABUFD_OK && fds[0] >= 0 && fds[1] >= 0 && infos[0].inode != infos[1].inode &&
              infos[0].size == 4096 && infos[1].size == 4096,
          "batch of 2: %s", dmabufd_last_error());
    int none[1] = {-1};
    rc = dmabufd_alloc_batch(c, "system", 4096, "c-batch", 0, 65, none, NULL);
    CHECK(rc == DMABUFD_E_INVALID_ARGUMENT && none[0] == -1, "batch of 65: %s",
          dmabufd_last_error());

    /* Each refusal the service can give this client. */
    expect_refusal(c, "unknown heap", "no-such-heap", 4096, "x", 0, DMABUFD_UNKNOWN_HEAP);
    expect_refusal(c, "size 0", "system", 0, "x", 0, DMABUFD_INVALID_SIZE);
    expect_refusal(c, "size over the cap", "system", 1ull << 40, "x", 0, DMABUFD_INVALID_SIZE);
    expect_refusal(c, "name with a newline", "system", 4096, "a\nb", 0, DMABUFD_INVALID_NAME);
    expect_refusal(c, "name of 40 bytes", "system", 4096,
                   "0123456789012345678901234567890123456789", 0, DMABUFD_INVALID_NAME);
    expect_refusal(c, "unknown flags", "system", 4096, "x", 0x100, DMABUFD_INVALID_FLAGS);
    expect_refusal(c, "NULL heap", NULL, 4096, "x", 0, DMABUFD_E_INVALID_ARGUMENT);

    /* Quota: 3 held (1 + the batch); one more fits, the next is refused. */
    int fourth = -1;
    rc = dmabufd_alloc(c, "system", 4096, "c-fourth", 0, &fourth, NULL);
    CHECK(rc == DMABUFD_OK, "fourth buffer within the quota: %s", dmabufd_last_error());
    expect_refusal(c, "fifth buffer", "system", 4096, "x", 0, DMABUFD_QUOTA_EXCEEDED);
    close(fourth);
    close(fds[0]);
    close(fds[1]);
    close(fd);
    dmabufd_disconnect(c);
    printf("%d failed\n", failures);
    return failures == 0 ? 0 : 1;
}
