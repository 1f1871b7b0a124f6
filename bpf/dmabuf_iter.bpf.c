// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * iter/dmabuf (Linux 6.16+): one fixed-size binary record per live dma-buf
 * in the system, whoever holds it. Kept in its own object so the task
 * iterators (task_iter.bpf.c) still load on kernels without iter/dmabuf.
 *
 * Record (80 bytes, little-endian, see src/scan/bpf.rs):
 *   u64 inode; u64 size; char exp_name[32]; char name[32];
 * Strings are NUL padded and at most 31 bytes; a buffer name is copied as
 * bytes, never printed as text, so it cannot forge other fields.
 */
#include "dmabuf_kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct dmabuf_record {
	__u64 inode;
	__u64 size;
	char exp_name[DMABUFD_NAME_LEN];
	char name[DMABUFD_NAME_LEN];
};

SEC("iter/dmabuf")
int dmabufd_dmabuf(struct bpf_iter__dmabuf *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct dma_buf *buf = ctx->dmabuf;
	struct dmabuf_record rec;
	const char *s;

	if (!buf)
		return 0;
	__builtin_memset(&rec, 0, sizeof(rec));
	rec.inode = BPF_CORE_READ(buf, file, f_inode, i_ino);
	rec.size = BPF_CORE_READ(buf, size);
	s = BPF_CORE_READ(buf, exp_name);
	if (s)
		bpf_probe_read_kernel_str(rec.exp_name, sizeof(rec.exp_name), s);
	/* name is guarded by name_lock, which BPF cannot take: a concurrent
	 * rename may give the old name, never a fault (probe read). */
	s = BPF_CORE_READ(buf, name);
	if (s)
		bpf_probe_read_kernel_str(rec.name, sizeof(rec.name), s);
	bpf_seq_write(seq, &rec, sizeof(rec));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
