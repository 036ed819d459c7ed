/*
 * The wire protocol between an HSM client (the acrn exec preload library, or pyacrn's
 * Python client) and the pyacrn hypervisor service ("acrn hv").  Every integer is
 * little-endian; every message is one SOCK_SEQPACKET datagram.
 *
 * One connection to the service's socket is one open file of /dev/acrn_hsm.  Its first
 * message is a hello.  After that the connection (the "main" socket) carries only control
 * messages: the registration of a channel (a socketpair end passed with SCM_RIGHTS) and the
 * cancellation of a blocked call.  Each calling thread uses a channel of its own, so that
 * ATTACH_IOREQ_CLIENT blocks only its caller, as the kernel's ioctl does.  The file is
 * released (the HSM driver's release: acrn_dev_release) when the main socket reaches EOF,
 * i.e. when the last process holding the descriptor closed it or died, and no call is in
 * flight.
 *
 * src/acrn/service/protocol.py mirrors this header; tests/service/test_service_python.py
 * compiles it and compares.
 */
#ifndef ACRN_SERVICE_PROTOCOL_H
#define ACRN_SERVICE_PROTOCOL_H

#include <stdint.h>

#define ACRN_SVC_VERSION 1

#define ACRN_SVC_HELLO_MAGIC 0x48524341u /* "ACRH" */
#define ACRN_SVC_REQ_MAGIC 0x51524341u   /* "ACRQ" */
#define ACRN_SVC_REP_MAGIC 0x50524341u   /* "ACRP" */
#define ACRN_SVC_CTL_MAGIC 0x43524341u   /* "ACRC" */

/* hello.kind */
#define ACRN_SVC_OPEN 1   /* this connection is an open file of /dev/acrn_hsm */
#define ACRN_SVC_STATUS 2 /* one JSON reply describing the service and its VMs, then EOF */

/* ctl.op, on the main socket */
#define ACRN_SVC_CTL_CHANNEL 1 /* one fd attached: a channel; the service answers on it */
#define ACRN_SVC_CTL_CANCEL 2  /* a signal reached the caller of call `seq` on `channel` */

/* req.flags */
#define ACRN_SVC_ARG_BUF 0x1     /* `value` is a pointer; the bytes read there follow */
#define ACRN_SVC_ARG_SHORT 0x2   /* only arg_len bytes at the pointer are readable */
#define ACRN_SVC_ARG_RO 0x4      /* the bytes are readable but not writable */
#define ACRN_SVC_ADDR_FAULT 0x8  /* the user address inside the argument cannot be pinned */
#define ACRN_SVC_FD_SENT 0x10    /* the eventfd the argument names is attached */
#define ACRN_SVC_FD_BAD 0x20     /* the eventfd the argument names is not open */

#define ACRN_SVC_MAX_ARG 4096
#define ACRN_SVC_MAX_MEM 4
#define ACRN_SVC_MAX_FDS 8

struct acrn_svc_hello {
	uint32_t magic;
	uint16_t version;
	uint16_t kind;
	uint32_t pid;      /* informational; the service trusts SO_PEERCRED */
	uint32_t reserved;
};

struct acrn_svc_hello_reply {
	uint32_t magic;
	int32_t status;    /* 0, or -errno: what open() returns */
};

struct acrn_svc_ctl {
	uint32_t magic;
	uint32_t op;
	uint32_t channel;
	uint32_t reserved;
	uint64_t seq;
};

/* The service's first message on a new channel. */
struct acrn_svc_channel_hello {
	uint32_t magic;
	uint32_t channel;
};

/*
 * One mapping of the caller's that backs the user address inside the argument
 * (acrn_vm_creation.ioreq_buf, acrn_vm_memmap.vma_base, the VM_INTR_MONITOR page): the
 * service maps the attached fd at `offset` for `len` bytes and rewrites the address.
 */
struct acrn_svc_mem {
	uint64_t start;    /* caller's address of the mapping */
	uint64_t len;
	uint64_t offset;   /* file offset of `start` */
	uint32_t prot;     /* PROT_* */
	int32_t fd_index;  /* index among the attached fds */
};

struct acrn_svc_req {
	uint32_t magic;
	uint32_t cmd;      /* the ioctl number, as the kernel sees it (32 bits) */
	uint64_t value;    /* the ioctl's unsigned long argument */
	uint64_t seq;      /* per channel, increasing */
	uint32_t arg_len;  /* argument bytes after the mem entries */
	uint32_t flags;
	uint32_t nmem;
	int32_t fd_index;  /* the eventfd's index among the attached fds, or -1 */
	/* struct acrn_svc_mem mem[nmem]; uint8_t arg[arg_len]; */
};

struct acrn_svc_rep {
	uint32_t magic;
	uint32_t out_len;  /* bytes to write back at the argument pointer, after this header */
	int64_t ret;       /* >= 0: the ioctl's result; < 0: -errno */
	uint64_t seq;
};

#endif
