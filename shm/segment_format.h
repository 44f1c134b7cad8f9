/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * tapwire segment file format, documented byte by byte in shm/FORMAT.md.
 * C only, fixed-width little-endian fields; the layout is pinned below.
 *
 * Bump TW_SEG_VERSION whenever a struct here changes size or meaning, a
 * record type's body changes layout, or TW_ABI_VERSION (bpf/) is bumped.
 * New record types may be added (append only) without a bump: readers skip
 * record types they do not know.
 */
#ifndef TAPWIRE_SEGMENT_FORMAT_H
#define TAPWIRE_SEGMENT_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "tapwire_flow.h"

#define TW_SEG_MAGIC "TWSEG\r\n\x1a" /* 8 bytes, no NUL stored */
#define TW_SEG_VERSION 1u
#define TW_SEG_HEADER_SIZE 4096u /* the record area starts here */
#define TW_SEG_ALIGN 8u /* every record starts 8-byte aligned */
#define TW_SEG_FILE_SUFFIX ".twseg"
/* Version 2: per-CPU streams (the capture directory). Version 1 (one stream
 * of CRC'd records) stays in use for the identity and flow streams and is
 * still read in the capture directory. */
#define TW_SEG_VERSION_STREAMS 2u
#define TW_SEG_BLOCK 4096u /* version 2: unit of the writes and of the block checksums */
#define TW_SEG_MAX_REGIONS 4096u /* version 2: regions a reader accepts */
#define TW_SEG_STREAM_CONTROL 0xffffffffu /* version 2: the region of the sensor's own records */
#define TW_SEG_REC8_SKIP 0x80000000u /* version 2: tw_seg_rec8.len flag */

enum tw_seg_state {
	TW_SEG_OPEN = 1, /* the writer may still append */
	TW_SEG_SEALED = 2, /* complete; never changes again */
};

/* First bytes of every segment file; the rest of the 4096-byte page is zero. */
struct tw_seg_header {
	char magic[8];
	uint32_t version;
	uint32_t header_size; /* TW_SEG_HEADER_SIZE */
	uint64_t capacity; /* bytes of record area the writer may fill */
	uint64_t seq; /* segment sequence number, increasing, never reused */
	uint64_t created_ns; /* CLOCK_REALTIME */
	uint64_t sealed_ns; /* CLOCK_REALTIME, 0 while open */
	uint32_t state; /* enum tw_seg_state; release-stored after the last commit */
	uint32_t writer_pid;
	/* Bytes of the record area that are published: records in
	 * [0, committed) are complete and never change. The writer stores it
	 * with release order after writing the records; readers load it with
	 * acquire order before reading them. */
	uint64_t committed;
	uint64_t record_count; /* records in [0, committed) */
	uint64_t first_ts_ns; /* smallest record timestamp, 0 if none */
	uint64_t last_ts_ns; /* largest record timestamp, 0 if none */
	uint32_t abi_version; /* TW_ABI_VERSION of the tw_pkt bodies */
	uint32_t reserved0;
};

/* Version 2, right after struct tw_seg_header (offset 96). */
struct tw_seg_streams {
	/* Every record with a timestamp at or below this is published: a reader
	 * merging the regions by time takes no record above it from an open
	 * segment. Release-stored after the regions' `committed`. */
	uint64_t watermark_ns;
	uint32_t regions; /* entries of the region table at offset 128 */
	uint32_t block_size; /* TW_SEG_BLOCK */
	uint64_t reserved[2];
};

/* Version 2: the region table, at offset 128, 64 bytes per region. A region
 * is one stream's bytes (one CPU's capture ring, or the control stream),
 * written as they were in memory. */
struct tw_seg_region {
	uint64_t file_off; /* of the region's first byte; a multiple of block_size, >= header_size */
	uint64_t capacity; /* bytes; a multiple of block_size */
	uint64_t crc_off; /* file offset of its block table (capacity / block_size struct tw_seg_block), in the header */
	uint64_t start; /* offset in the region of its first record (< block_size) */
	uint64_t committed; /* offset in the region past the last published record (>= start) */
	uint64_t records; /* records in [start, committed), skip records excluded */
	uint32_t stream; /* the CPU, or TW_SEG_STREAM_CONTROL */
	uint32_t reserved0;
	uint64_t reserved1;
};

/* Version 2: the checksum of one block of a region: CRC-32C of its first
 * `len` bytes (the whole block once full). Stored as one 8-byte word after
 * the block's bytes were written and before `committed` covers them. */
struct tw_seg_block {
	uint32_t crc32c;
	uint32_t len;
};

/* Version 2: the record header in a region (8-byte aligned, body, zero to 7
 * bytes of padding). With TW_SEG_REC8_SKIP in len, the low 31 bits are bytes
 * to skip after this header (the end of a capture ring, a record the sensor
 * found invalid). The same layout as the capture rings' struct tw_cring_rec. */
struct tw_seg_rec8 {
	uint32_t len;
	uint16_t type; /* enum tw_seg_rec_type; 0 only in skip records */
	uint16_t flags; /* 0 */
};

/* Every record: this header, then `len` body bytes, then zero padding to
 * TW_SEG_ALIGN. */
struct tw_seg_rec_hdr {
	uint32_t len; /* body bytes, excluding this header and the padding */
	uint16_t type; /* enum tw_seg_rec_type */
	uint16_t flags; /* reserved, 0 */
	uint32_t crc32c; /* CRC-32C (Castagnoli) of the body */
	uint32_t reserved; /* 0 */
};

enum tw_seg_rec_type {
	TW_REC_PACKET = 1, /* body: struct tw_pkt (ts_ns CLOCK_REALTIME) + cap_len bytes */
	TW_REC_IFACE = 2, /* body: struct tw_seg_iface */
	TW_REC_LOSS = 3, /* body: struct tw_seg_loss */
	/* Identity stream (DATA_DIR/identity/, docs/IDENTITY.md): */
	TW_REC_SOCKET = 4, /* body: struct tw_sock_event (bpf/tapwire_abi.h), ts_ns CLOCK_REALTIME */
	TW_REC_PROCESS = 5, /* body: struct tw_seg_process + exe_len bytes */
	TW_REC_CGROUP = 6, /* body: struct tw_seg_cgroup + path_len bytes */
	TW_REC_WORKLOAD = 7, /* body: struct tw_seg_workload + a JSON object (docs/IDENTITY.md) */
	TW_REC_DUMP = 8, /* body: struct tw_seg_dump */
	/* Flow stream (DATA_DIR/flows/, docs/FLOWS.md): */
	TW_REC_FLOW = 9, /* body: struct tw_seg_flow */
};

/* Flags of identity records (tw_seg_process.flags, tw_seg_cgroup.flags,
 * tw_seg_workload.flags; tw_sock_event.flags has TW_SOCK_F_DUMP). */
enum tw_ident_rec_flag {
	TW_IDENT_REC_F_DUMP = 1u << 0, /* part of the state dump that opens an identity segment */
};

/* A process: seen at exec (TW_IDENT_EXEC), at exit (TW_IDENT_EXIT), or
 * found running when the sensor started (TW_PROC_SCAN). */
#define TW_PROC_SCAN 5u
struct tw_seg_process {
	uint64_t ts_ns; /* CLOCK_REALTIME of the event; for a scan or a dump, when it was seen */
	uint64_t cgroup_id; /* cgroup v2 id, 0 if unknown */
	uint32_t tgid;
	uint32_t ppid;
	uint8_t type; /* TW_IDENT_EXEC, TW_IDENT_EXIT or TW_PROC_SCAN */
	uint8_t flags; /* enum tw_ident_rec_flag */
	uint16_t exe_len; /* bytes of executable path following this struct (no NUL) */
	uint32_t reserved;
	char comm[16]; /* NUL-padded */
};

/* A cgroup v2 directory: id (its inode number) and path below the cgroup2
 * mount ("/kubepods.slice/.../cri-containerd-<id>.scope"). */
struct tw_seg_cgroup {
	uint64_t ts_ns;
	uint64_t cgroup_id;
	uint16_t path_len; /* bytes of path following this struct (no NUL) */
	uint8_t flags; /* enum tw_ident_rec_flag */
	uint8_t reserved[5];
};

/* A workload object (Pod, Service, EndpointSlice, Node, Self, Sync) as one
 * compact JSON object, docs/IDENTITY.md. */
struct tw_seg_workload {
	uint64_t ts_ns;
	uint8_t flags; /* enum tw_ident_rec_flag */
	uint8_t reserved[7];
};

/* Brackets the state dump that opens every identity segment: the records
 * between begin and end restate what was known at ts_ns. */
enum tw_dump_phase {
	TW_DUMP_BEGIN = 1,
	TW_DUMP_END = 2,
};
struct tw_seg_dump {
	uint64_t ts_ns;
	uint32_t phase; /* enum tw_dump_phase */
	uint32_t reserved;
	uint64_t records; /* TW_DUMP_END: records the state holds; fewer in the segment = an incomplete dump */
};

/* Names an interface; written at the start of every segment for each
 * attached interface and whenever one is attached, so that each segment is
 * self-describing. */
struct tw_seg_iface {
	uint32_t ifindex;
	uint32_t reserved;
	char name[16]; /* NUL-padded */
	uint64_t ts_ns; /* CLOCK_REALTIME */
};

/* Records lost between the kernel and this segment (counted, never silent).
 * Written by the sensor when its drop counters rise. */
struct tw_seg_loss {
	uint64_t ts_ns;
	uint32_t reason; /* enum tw_drop_reason (bpf/tapwire_abi.h) */
	uint32_t reserved;
	uint64_t count; /* packets lost since the previous loss record for this reason */
};

/* Why a flow record is final (tw_seg_flow.end); 0 while the flow lives. */
enum tw_flow_end {
	TW_FLOW_END_NONE = 0,
	TW_FLOW_END_FIN = 1, /* FIN both ways (or one FIN and an RST after it) */
	TW_FLOW_END_RST = 2,
	TW_FLOW_END_TIMEOUT = 3, /* UDP idle for tap.flows.udpTimeout; an unanswered SYN after tap.flows.synTimeout */
	TW_FLOW_END_IDLE = 4, /* TCP without a packet for tap.flows.tcpIdleTimeout */
	TW_FLOW_END_EVICTED = 5, /* the flow table was full */
	TW_FLOW_END_REUSED = 6, /* a SYN with a new ISN on the same addresses and ports */
	TW_FLOW_END_STOPPED = 7, /* the sensor stopped */
};

/*
 * A flow's state (TW_REC_FLOW), written by the sensor while the flow lives
 * (when it changed, at most every tap.flows.interval) and once more when it
 * ends (end != 0). Counters are cumulative: the last record of a flow_id
 * holds its totals. Times in st are CLOCK_REALTIME here.
 */
struct tw_seg_flow {
	uint64_t ts_ns; /* when the record was written */
	uint64_t flow_id; /* tw_flow_id(): the same in every record of the flow */
	struct tw_flow_key key;
	uint8_t end; /* enum tw_flow_end */
	uint8_t reserved[7];
	struct tw_flow_state st;
};

/* A flow's id: FNV-1a over its key and the first packet's time. */
static inline uint64_t tw_flow_id(const struct tw_flow_key *k, uint64_t first_ns)
{
	const unsigned char *b = (const unsigned char *)k;
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < sizeof(*k); i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	for (int i = 0; i < 8; i++)
		h = (h ^ ((first_ns >> (8 * i)) & 0xff)) * 0x100000001b3ull;
	return h;
}

#ifdef __cplusplus
static_assert(sizeof(struct tw_flow_key) == 40, "tw_flow_key layout");
static_assert(sizeof(struct tw_flow_dir) == 128, "tw_flow_dir layout: TW_REC_FLOW bodies embed it");
static_assert(sizeof(struct tw_flow_state) == 296, "tw_flow_state layout: TW_REC_FLOW bodies embed it");
static_assert(sizeof(struct tw_seg_flow) == 360, "tw_seg_flow layout");
static_assert(sizeof(struct tw_seg_header) == 96, "tw_seg_header layout changed: bump TW_SEG_VERSION");
static_assert(offsetof(struct tw_seg_header, committed) == 56, "tw_seg_header layout");
static_assert(sizeof(struct tw_seg_rec_hdr) == 16, "tw_seg_rec_hdr layout");
static_assert(sizeof(struct tw_seg_streams) == 32, "tw_seg_streams layout");
static_assert(sizeof(struct tw_seg_region) == 64, "tw_seg_region layout");
static_assert(sizeof(struct tw_seg_block) == 8, "tw_seg_block layout");
static_assert(sizeof(struct tw_seg_rec8) == 8, "tw_seg_rec8 layout");
static_assert(sizeof(struct tw_seg_iface) == 32, "tw_seg_iface layout");
static_assert(sizeof(struct tw_seg_loss) == 24, "tw_seg_loss layout");
static_assert(sizeof(struct tw_seg_process) == 48, "tw_seg_process layout");
static_assert(sizeof(struct tw_seg_cgroup) == 24, "tw_seg_cgroup layout");
static_assert(sizeof(struct tw_seg_workload) == 16, "tw_seg_workload layout");
static_assert(sizeof(struct tw_seg_dump) == 24, "tw_seg_dump layout");
#endif

#endif /* TAPWIRE_SEGMENT_FORMAT_H */
