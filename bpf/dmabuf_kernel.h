/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The few kernel types the dmabufd iterators read. Only the fields used are
 * declared; preserve_access_index makes every access a CO-RE relocation,
 * resolved at load time against /sys/kernel/btf/vmlinux, so the layouts
 * here need not match the running kernel's.
 */
#ifndef DMABUFD_DMABUF_KERNEL_H
#define DMABUFD_DMABUF_KERNEL_H

typedef unsigned char __u8;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef unsigned short __u16;
typedef __u32 __wsum;
typedef __u16 __be16;
typedef __u32 __be32;

/* DMA_BUF_MAGIC, include/uapi/linux/magic.h (since 5.3). */
#define DMA_BUF_MAGIC 0x444d4142
/* DMA_BUF_NAME_LEN, include/uapi/linux/dma-buf.h: 32 with the NUL. */
#define DMABUFD_NAME_LEN 32

struct seq_file;

struct super_block {
	unsigned long s_magic;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct files_struct;
struct mm_struct;

struct task_struct {
	int pid;
	int tgid;
	struct task_struct *group_leader;
	struct files_struct *files;
	struct mm_struct *mm;
} __attribute__((preserve_access_index));

struct vm_area_struct {
	unsigned long vm_start;
	unsigned long vm_end;
	unsigned long vm_pgoff;
	struct file *vm_file;
} __attribute__((preserve_access_index));

struct dma_buf {
	unsigned long size; /* size_t */
	struct file *file;
	const char *exp_name;
	const char *name;
} __attribute__((preserve_access_index));

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((preserve_access_index));

struct bpf_iter__dmabuf {
	struct bpf_iter_meta *meta;
	struct dma_buf *dmabuf;
} __attribute__((preserve_access_index));

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	__u32 fd;
	struct file *file;
} __attribute__((preserve_access_index));

struct bpf_iter__task_vma {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	struct vm_area_struct *vma;
} __attribute__((preserve_access_index));

#endif
