// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * iter/task_file (5.8+) and iter/task_vma (5.12+): every dma-buf fd and
 * every dma-buf mapping of every process in the reader's pid namespace, as
 * fixed-size binary little-endian records (see src/scan/bpf.rs):
 *
 *   task_file (24 bytes): u32 tgid; u32 fd; u64 inode; u64 size;
 *   task_vma  (40 bytes): u32 tgid; u32 pad; u64 start; u64 end;
 *                         u64 pgoff (pages); u64 inode;
 *
 * A file is a dma-buf when its inode's superblock has DMA_BUF_MAGIC; its
 * struct dma_buf is then file->private_data.
 *
 * Records are per process (tgid), not per thread: a thread other than the
 * group leader is skipped when it shares the leader's files table (task_file)
 * or address space (task_vma), as the kernel's own task_file walk does. A
 * thread with a table of its own (unshare(CLONE_FILES)) is reported under its
 * tgid. When the leader has exited but threads live on, each thread may
 * report the same records: the reader drops exact duplicates.
 */
#include "dmabuf_kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct fd_record {
	__u32 tgid;
	__u32 fd;
	__u64 inode;
	__u64 size;
};

struct vma_record {
	__u32 tgid;
	__u32 pad;
	__u64 start;
	__u64 end;
	__u64 pgoff;
	__u64 inode;
};

static __always_inline int is_dmabuf(struct file *file)
{
	return BPF_CORE_READ(file, f_inode, i_sb, s_magic) == DMA_BUF_MAGIC;
}

SEC("iter/task_file")
int dmabufd_task_file(struct bpf_iter__task_file *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct dma_buf *buf;
	struct fd_record rec;

	if (!task || !file)
		return 0;
	if (BPF_CORE_READ(task, pid) != BPF_CORE_READ(task, tgid) &&
	    BPF_CORE_READ(task, files) == BPF_CORE_READ(task, group_leader, files))
		return 0;
	if (!is_dmabuf(file))
		return 0;
	buf = BPF_CORE_READ(file, private_data);
	__builtin_memset(&rec, 0, sizeof(rec));
	rec.tgid = BPF_CORE_READ(task, tgid);
	rec.fd = ctx->fd;
	rec.inode = BPF_CORE_READ(file, f_inode, i_ino);
	rec.size = buf ? BPF_CORE_READ(buf, size) : 0;
	bpf_seq_write(seq, &rec, sizeof(rec));
	return 0;
}

SEC("iter/task_vma")
int dmabufd_task_vma(struct bpf_iter__task_vma *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct vm_area_struct *vma = ctx->vma;
	struct file *file;
	struct vma_record rec;

	if (!task || !vma)
		return 0;
	if (BPF_CORE_READ(task, pid) != BPF_CORE_READ(task, tgid) &&
	    BPF_CORE_READ(task, mm) == BPF_CORE_READ(task, group_leader, mm))
		return 0;
	file = BPF_CORE_READ(vma, vm_file);
	if (!file || !is_dmabuf(file))
		return 0;
	__builtin_memset(&rec, 0, sizeof(rec));
	rec.tgid = BPF_CORE_READ(task, tgid);
	rec.start = BPF_CORE_READ(vma, vm_start);
	rec.end = BPF_CORE_READ(vma, vm_end);
	rec.pgoff = BPF_CORE_READ(vma, vm_pgoff);
	rec.inode = BPF_CORE_READ(file, f_inode, i_ino);
	bpf_seq_write(seq, &rec, sizeof(rec));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
