/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * tapwire kernel <-> userspace ABI. C only, fixed-width types, included by the
 * BPF programs (bpf/NAME.bpf.c) and by userspace. Layouts are pinned by the
 * static asserts at the end of this file.
 *
 * Bump TW_ABI_VERSION whenever a struct below changes size or meaning, or an
 * enum value is renumbered. Adding a new enum value at the end (before the
 * __MAX marker) is append-only and needs no bump. Records stored in segment
 * files embed struct tw_pkt, so a bump here also bumps TW_SEG_VERSION (shm/).
 */
#ifndef TAPWIRE_ABI_H
#define TAPWIRE_ABI_H

#ifdef __BPF__
#include <linux/types.h>
#else
#include <linux/types.h>
#include <stddef.h>
#endif
/* The flow table's types. Not for programs built on vmlinux.h
 * (bpf/identity.bpf.c), which have the kernel's own definitions and no use
 * for them. */
#ifndef __VMLINUX_H__
#include "tapwire_flow.h"
#define TW_ABI_HAVE_FLOWS 1
#endif

#define TW_ABI_VERSION 1

/* Payload bytes carried by one record. A packet whose captured payload is
 * longer (GSO/GRO super-packets) is split into several records. */
#define TW_CHUNK_MAX 16384u
/* Records per packet at most: 16 x 16 KiB = 256 KiB, above the 64 KiB GSO
 * default and BIG TCP's common sizes. What lies beyond is cut and flagged. */
#define TW_MAX_CHUNKS 16u
/* The capture rings (map tw_crings): one per CPU, with one producer (the
 * capture programs on that CPU, which never run nested there: softirq, or
 * process context with bottom halves off) and one consumer (the sensor), so
 * neither side takes a lock. Each ring is one value of an mmap'able array
 * (index = CPU): a TW_CRING_HDR-byte header page, the data area
 * (tw_cring_bytes, a power of two), then TW_CRING_SLACK bytes that are never
 * written; they only let the verifier see that a record starting below the
 * data area's end stays inside the value. */
#define TW_CRING_HDR 4096u
#define TW_CRING_SLACK (32u << 10)
struct tw_cring_hdr {
	__u64 prod; /* bytes ever produced: stored (release) after the records below it are written */
	__u8 pad0[56]; /* prod and cons on cache lines of their own */
	__u64 cons; /* bytes ever consumed: stored (release) by the consumer once it is done with them */
	/* CLOCK_REALTIME - CLOCK_MONOTONIC, set by the consumer (at start and
	 * every second): records are stamped with real time, so that the ring's
	 * bytes are written to the segment files as they are. */
	__u64 real_off;
	__u8 pad1[48];
};
/* A record in the data area, at a multiple of 8: header, body, zero to 7
 * bytes of padding. A record never wraps: one that would not fit before the
 * end is preceded by a skip record covering the rest of the data area. The
 * header is the record header of the segment files' per-CPU streams
 * (struct tw_seg_rec8, shm/FORMAT.md): the sensor writes spans of the ring
 * to disk as they are. */
struct tw_cring_rec {
	__u32 len; /* body bytes; with TW_CRING_SKIP, bytes to skip after this header */
	__u16 type; /* segment record type: 1 = TW_REC_PACKET */
	__u16 flags; /* 0 */
};
#define TW_CRING_SKIP 0x80000000u
/* The doorbell (tw_doorbell): a BPF ring buffer of CPU numbers. */
#define TW_DOORBELL_BYTES 4096u

/* Stacked VLAN tags the programs walk in the packet (802.1ad + 802.1Q, QinQ),
 * besides a tag the driver took off into the skb's metadata. Deeper stacks
 * are counted (TW_DROP_VLAN_LIMIT). */
#define TW_MAX_VLAN_TAGS 2u
/* IP extension headers the programs walk before the L4 header: IPv6
 * hop-by-hop, routing, fragment, destination options (twice, RFC 8200 4.1),
 * mobility, HIP, shim6, AH (IPv4 and IPv6), with room to spare. More are
 * counted (TW_DROP_IPV6_EXT_LIMIT); ESP ends the walk (TW_STAT_IPSEC_ESP). */
#define TW_MAX_EXT_HEADERS 10u
/* Default snap length: 0 means the whole L4 payload. */
#define TW_SNAPLEN_ALL 0u

enum tw_direction {
	TW_DIR_INGRESS = 0,
	TW_DIR_EGRESS = 1,
};

/* struct tw_pkt.flags */
enum tw_pkt_flag {
	TW_PKT_F_TRUNCATED = 1u << 0, /* payload cut (snap length or chunk limit) */
	TW_PKT_F_CONTINUATION = 1u << 1, /* not the packet's first record */
	TW_PKT_F_MORE = 1u << 2, /* more records of this packet follow */
	TW_PKT_F_VLAN = 1u << 3, /* vlan_tci is valid */
	/* the first fragment of a fragmented IP datagram (IPv4 MF set and offset
	 * 0, or an IPv6 fragment header with M set and offset 0): payload_len is
	 * what this fragment carries, not the whole datagram. The other
	 * fragments have no L4 header and are counted (TW_DROP_IP_FRAGMENT). */
	TW_PKT_F_FRAGMENT = 1u << 4,
};

/* TCP flag bits as on the wire (struct tw_pkt.tcp_flags). */
enum tw_tcp_flag {
	TW_TCP_FIN = 0x01,
	TW_TCP_SYN = 0x02,
	TW_TCP_RST = 0x04,
	TW_TCP_PSH = 0x08,
	TW_TCP_ACK = 0x10,
	TW_TCP_URG = 0x20,
	TW_TCP_ECE = 0x40,
	TW_TCP_CWR = 0x80,
};

/*
 * One record per packet (or per chunk of a large packet), followed by cap_len
 * payload bytes. In the BPF ring buffers ts_ns is CLOCK_MONOTONIC
 * (bpf_ktime_get_ns); the sensor rewrites it to CLOCK_REALTIME before the
 * record reaches a segment file. Addresses are in network byte order (IPv4 in
 * the first 4 bytes, the rest zero); ports, seq, ack and window in host order.
 */
struct tw_pkt {
	__u64 ts_ns;
	__u32 ifindex;
	__u32 payload_len; /* L4 payload length of the whole packet on the wire */
	__u32 chunk_off; /* offset of this record's bytes in the L4 payload */
	__u32 cap_len; /* payload bytes following this header */
	__u32 seq; /* TCP sequence number of the packet's first payload byte */
	__u32 ack;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 window; /* TCP window, unscaled */
	__u16 vlan_tci;
	__u16 flags; /* enum tw_pkt_flag */
	__u8 direction; /* enum tw_direction */
	__u8 ip_version; /* 4 or 6 */
	__u8 l4_proto; /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP or IPPROTO_ICMPV6 (payload: the whole ICMP message) */
	__u8 tcp_flags; /* enum tw_tcp_flag */
	__u8 ttl; /* IPv4 TTL or IPv6 hop limit */
	__u8 tcp_wscale; /* SYN only: the window scale option's shift, TW_WSCALE_NONE without one */
};

#define TW_WSCALE_NONE 0xffu

/*
 * Why a packet that should have been captured was not, or only partly.
 * Counted per CPU in the tw_counters map. Append only.
 */
enum tw_drop_reason {
	TW_DROP_RINGBUF_FULL = 0, /* the CPU's capture ring had no room (the sensor is behind) */
	TW_DROP_NO_RING = 1, /* no capture ring for this CPU */
	TW_DROP_LOAD_FAILED = 2, /* bpf_skb_load_bytes failed on the payload */
	TW_DROP_IP_FRAGMENT = 3, /* non-first IP fragment: no L4 header to file it under */
	/* retired: malformed headers are counted by layer since the reasons
	 * below were added (TW_DROP_BAD_L2_HEADER ...); kept so that the reason
	 * numbers of loss records in older segment files keep their meaning */
	TW_DROP_BAD_HEADER = 4,
	TW_DROP_NO_SCRATCH = 5, /* per-CPU scratch buffer missing */
	/* more IPv6 extension headers (AH included) than the programs walk
	 * (TW_MAX_EXT_HEADERS): the L4 header was not reached */
	TW_DROP_IPV6_EXT_LIMIT = 6,
	TW_DROP_BAD_L2_HEADER = 7, /* frame shorter than an Ethernet header */
	TW_DROP_BAD_VLAN_HEADER = 8, /* 802.1Q/802.1ad tag cut short */
	TW_DROP_VLAN_LIMIT = 9, /* more stacked VLAN tags than the programs walk (TW_MAX_VLAN_TAGS) */
	TW_DROP_BAD_IPV4_HEADER = 10, /* cut short, version != 4, IHL < 5, or total length below the header */
	TW_DROP_BAD_IPV6_HEADER = 11, /* cut short or version != 6 */
	TW_DROP_BAD_IPV6_EXT_HEADER = 12, /* an IPv6 extension header cut short or past the packet's end */
	TW_DROP_BAD_AH_HEADER = 13, /* IPsec AH header cut short, too small, or past the packet's end */
	TW_DROP_BAD_TCP_HEADER = 14, /* cut short, data offset < 5, or options past the packet's end */
	TW_DROP_BAD_UDP_HEADER = 15, /* cut short or past the packet's end */
	TW_DROP__MAX
};

/* Activity counters, per CPU. Append only. */
enum tw_stat {
	TW_STAT_PACKETS_SEEN = 0, /* every skb the programs ran on */
	TW_STAT_PACKETS_CAPTURED = 1, /* packets whose records all reached a ring */
	TW_STAT_BYTES_CAPTURED = 2, /* payload bytes written to rings */
	TW_STAT_RECORDS = 3, /* records written (chunks) */
	TW_STAT_FILTERED = 4, /* skipped by a capture filter (by design, not a drop) */
	TW_STAT_NOT_TCP_UDP = 5, /* not IPv4/IPv6 TCP, UDP or ICMP (by design, not a drop) */
	TW_STAT_TRUNCATED = 6, /* packets whose payload was cut (flagged) */
	/* payload-less TCP segments without SYN/FIN/RST: not recorded, by design. With TCP flow
	 * accounting on (TW_SET_FLOWS_TCP) they meet the filters, pod targeting and the duplicate
	 * check first (and count as filtered, not_targeted or duplicate there), are accounted in
	 * their flow, and only those are counted here; without it, all of them, before the filters. */
	TW_STAT_EMPTY_ACK = 7,
	TW_STAT_NOT_TARGETED = 8, /* neither address belongs to a targeted pod (by design, not a drop) */
	TW_STAT_DUPLICATE = 9, /* already captured on another interface of this node (by design, not a drop) */
	TW_STAT_IPSEC_ESP = 10, /* IPsec ESP: encrypted, no L4 header to read (by design, not a drop) */
	TW_STAT_FIRST_FRAGMENTS = 11, /* first IP fragments captured, flagged TW_PKT_F_FRAGMENT */
	TW_STAT_FLOWS_CREATED = 12, /* flows inserted into tw_flows (a reused 4-tuple's new flow included) */
	TW_STAT_FLOW_UNTRACKED = 13, /* packets of a new flow that found tw_flows full: captured, not accounted */
	TW_STAT_FLOW_ENDS_LOST = 14, /* flows ended by a reused 4-tuple that found tw_flow_ends full */
	TW_STAT__MAX
};

struct tw_counters {
	__u64 stat[TW_STAT__MAX];
	__u64 drop[TW_DROP__MAX];
};

/*
 * Runtime filter settings. The rule set (these settings, the CIDR and port
 * rules, the interface set) exists in TW_RULE_GENERATIONS generations: the
 * tw_settings array map holds one struct tw_settings per generation, and
 * the array-of-maps tw_cidr4, tw_cidr6, tw_ports and tw_ifaces hold one
 * inner map per generation. The programs read the active generation's index
 * once per packet (the global tw_active_gen), so a packet is judged by one
 * whole rule set: userspace fills the inactive generation, switches
 * tw_active_gen with one store, waits until no program can still be using
 * the old generation, and only then clears it.
 */
#define TW_RULE_GENERATIONS 2u
/* Rules per rule map and generation (tw_cidr4, tw_cidr6, tw_ports), and
 * interfaces per generation (tw_ifaces). */
#define TW_MAX_RULES 1024u
#define TW_MAX_IFACES 4096u
enum tw_setting_flag {
	TW_SET_CIDR_ALLOWLIST = 1u << 0, /* only addresses matching an allow rule */
	TW_SET_PORT_ALLOWLIST = 1u << 1, /* only ports matching an allow rule */
	TW_SET_IFACE_ALLOWLIST = 1u << 2, /* only ifindexes with TW_IF_CAPTURE in tw_ifaces */
	TW_SET_CIDR_RULES = 1u << 3, /* tw_cidr4/tw_cidr6 hold rules: look them up */
	TW_SET_PORT_RULES = 1u << 4, /* tw_ports holds rules: look it up */
	TW_SET_TARGETS = 1u << 5, /* pod targeting on: only addresses in tw_targets */
	TW_SET_FLOWS_TCP = 1u << 6, /* account TCP flows in tw_flows (tap.enabledDissectors has tcp) */
	TW_SET_FLOWS_UDP = 1u << 7, /* account UDP flows in tw_flows (tap.enabledDissectors has udp) */
};

/* Values of the tw_ifaces map (per ifindex). */
enum tw_iface_flag {
	TW_IF_CAPTURE = 1u << 0, /* in the interface set (see TW_SET_IFACE_ALLOWLIST) */
	TW_IF_NO_L2 = 1u << 1, /* packets start at the L3 header (tun, wireguard, ...) */
};

struct tw_settings {
	__u32 flags; /* enum tw_setting_flag */
	__u32 snaplen; /* payload bytes kept per packet, 0 = all */
};

enum tw_rule_action {
	TW_RULE_ALLOW = 1,
	TW_RULE_DENY = 2,
};

struct tw_cidr4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct tw_cidr6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/*
 * Identity (bpf/identity.bpf.c): which process and cgroup own the sockets
 * whose traffic the capture programs see. Events go through one ring buffer
 * (tw_ident_ring) to the sensor, which stores them in the identity stream
 * (shm/FORMAT.md, record types TW_REC_SOCKET and TW_REC_PROCESS). In the ring
 * ts_ns is CLOCK_MONOTONIC; in a segment file it is CLOCK_REALTIME.
 */
enum tw_ident_event_type {
	TW_IDENT_SOCK_OPEN = 1, /* first packet of a socket (or of a socket at a new local address) */
	TW_IDENT_SOCK_CLOSE = 2, /* the socket was released */
	TW_IDENT_EXEC = 3, /* a process called execve */
	TW_IDENT_EXIT = 4, /* a process (thread group) exited */
};

/* struct tw_sock_event.flags */
enum tw_sock_flag {
	TW_SOCK_F_NO_CREATOR = 1u << 0, /* created before the hooks were attached: pid/comm unknown */
	TW_SOCK_F_ACCEPTED = 1u << 1, /* accepted connection: pid/comm are the listening socket's creator */
	TW_SOCK_F_UNCONNECTED = 1u << 2, /* raddr/rport are zero: the socket talks to many peers (UDP) */
	TW_SOCK_F_DUMP = 1u << 3, /* re-announced at the start of an identity segment (state, not an event) */
};

struct tw_sock_event {
	__u64 ts_ns;
	__u64 cookie; /* socket cookie: unique per socket while the machine runs */
	__u64 cgroup_id; /* cgroup v2 id of the socket (its creator's cgroup) */
	__u64 netns_cookie;
	__u32 tgid; /* process (thread group) that created the socket; 0 unknown */
	__u32 pid; /* thread that created it */
	__u8 type; /* enum tw_ident_event_type: TW_IDENT_SOCK_OPEN or _CLOSE */
	__u8 l4_proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 ip_version; /* 4 or 6 */
	__u8 flags; /* enum tw_sock_flag */
	__u16 lport; /* local port, host order */
	__u16 rport; /* remote port, host order; 0 with TW_SOCK_F_UNCONNECTED */
	__u8 laddr[16]; /* local address as on the wire (IPv4 in the first 4 bytes) */
	__u8 raddr[16];
	char comm[16]; /* creator's comm, NUL-padded */
};

#define TW_EXEC_FILENAME_MAX 256u

struct tw_exec_event {
	__u64 ts_ns;
	__u64 cgroup_id;
	__u32 tgid;
	__u32 ppid; /* parent's tgid (0 if unknown) */
	__u8 type; /* TW_IDENT_EXEC or TW_IDENT_EXIT */
	__u8 reserved[3];
	__u32 filename_len; /* bytes of filename used (no NUL); 0 for TW_IDENT_EXIT */
	char comm[16];
	char filename[TW_EXEC_FILENAME_MAX]; /* the path given to execve */
};

/* Pod targeting (tap.regex, tap.namespaces, tap.excludedNamespaces): with
 * TW_SET_TARGETS set, a packet is captured only if its source or destination
 * address is a key of tw_targets. */
struct tw_ip_key {
	__u8 ip_version; /* 4 or 6 */
	__u8 reserved[3];
	__u8 addr[16]; /* IPv4 in the first 4 bytes, the rest zero */
};

/*
 * Identity counters (bpf/identity.bpf.c), per CPU in the tw_ident_counters
 * array map (one entry). Append only.
 */
enum tw_ident_drop_reason {
	/* no room in tw_ident_ring: the event is lost (a SOCK_OPEN is tried
	 * again on the socket's next packet, so a socket may still be named) */
	TW_IDENT_DROP_RINGBUF_FULL = 0,
	/* socket storage could not be allocated (memory): the socket stays unnamed */
	TW_IDENT_DROP_NO_STORAGE = 1,
	/* the packet's IP/TCP/UDP header could not be read: the socket is
	 * announced on a later packet, or never */
	TW_IDENT_DROP_BAD_HEADER = 2,
	TW_IDENT_DROP__MAX
};

/* tw_ident_counters.emitted is indexed by enum tw_ident_event_type (slot 0 unused). */
#define TW_IDENT_TYPE_SLOTS 8u

struct tw_ident_counters {
	__u64 emitted[TW_IDENT_TYPE_SLOTS]; /* events written to tw_ident_ring, by type */
	__u64 drop[TW_IDENT_DROP__MAX];
};

/*
 * Flow accounting (docs/FLOWS.md): the capture programs count every TCP and
 * UDP packet that passes the filters, pod targeting and the duplicate check
 * in the tw_flows hash map (key struct tw_flow_key, bpf/tapwire_flow.h), one
 * entry per flow, updated under the entry's own lock: a sequence word taken
 * with a compare-and-swap, not a bpf_spin_lock, whose helpers turn
 * interrupts off and on for every packet (costly on virtual machines). The
 * sensor reads and deletes entries (tw_flows is a plain hash: nothing is
 * ever evicted behind the sensor's back).
 */
#define TW_FLOWS_DEFAULT_MAX 65536u
#define TW_FLOW_ENDS_RING_BYTES (256u * 1024u)

#ifdef TW_ABI_HAVE_FLOWS

struct tw_flow_value {
	__u32 seq; /* even: free; odd: a program holds the entry and is updating st */
	__u32 pad;
	struct tw_flow_state st; /* times CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	/* seq's value, stored right after the entry is taken (before st
	 * changes) and again before it is given back: a copy of the entry
	 * (read forward) whose seq and seq_end are equal and even is
	 * consistent. */
	__u32 seq_end;
	__u32 pad_end;
};

/* A flow the programs ended themselves (a SYN with a new ISN on the same
 * addresses and ports, TW_FLOW_REUSE): its last state, pushed into the
 * tw_flow_ends ring buffer for the sensor to write with end = reused. */
struct tw_flow_end_rec {
	struct tw_flow_key key;
	struct tw_flow_state st; /* times CLOCK_MONOTONIC */
};
#endif /* TW_ABI_HAVE_FLOWS */

#ifndef __BPF__
#ifdef __cplusplus
#define TW_STATIC_ASSERT static_assert
#else
#define TW_STATIC_ASSERT _Static_assert
#endif
TW_STATIC_ASSERT(sizeof(struct tw_pkt) == 80, "tw_pkt layout changed: bump TW_ABI_VERSION");
TW_STATIC_ASSERT(offsetof(struct tw_pkt, saddr) == 32, "tw_pkt layout");
TW_STATIC_ASSERT(offsetof(struct tw_pkt, sport) == 64, "tw_pkt layout");
TW_STATIC_ASSERT(offsetof(struct tw_pkt, flags) == 72, "tw_pkt layout");
TW_STATIC_ASSERT(offsetof(struct tw_pkt, ttl) == 78, "tw_pkt layout");
TW_STATIC_ASSERT(offsetof(struct tw_pkt, tcp_wscale) == 79, "tw_pkt layout");
TW_STATIC_ASSERT(sizeof(struct tw_counters) == 8 * ((int)TW_STAT__MAX + (int)TW_DROP__MAX), "tw_counters layout");
TW_STATIC_ASSERT(sizeof(struct tw_settings) == 8, "tw_settings layout");
TW_STATIC_ASSERT(sizeof(struct tw_cidr4_key) == 8, "tw_cidr4_key layout");
TW_STATIC_ASSERT(sizeof(struct tw_cidr6_key) == 20, "tw_cidr6_key layout");
TW_STATIC_ASSERT(sizeof(struct tw_sock_event) == 96, "tw_sock_event layout: bump TW_ABI_VERSION");
TW_STATIC_ASSERT(offsetof(struct tw_sock_event, lport) == 44, "tw_sock_event layout");
TW_STATIC_ASSERT(offsetof(struct tw_sock_event, comm) == 80, "tw_sock_event layout");
TW_STATIC_ASSERT(sizeof(struct tw_exec_event) == 304, "tw_exec_event layout: bump TW_ABI_VERSION");
TW_STATIC_ASSERT(sizeof(struct tw_ip_key) == 20, "tw_ip_key layout");
TW_STATIC_ASSERT(sizeof(struct tw_flow_key) == 40, "tw_flow_key layout");
TW_STATIC_ASSERT(sizeof(struct tw_flow_state) == 296, "tw_flow_state layout");
TW_STATIC_ASSERT(sizeof(struct tw_cring_hdr) == 128 && sizeof(struct tw_cring_rec) == 8, "tw_cring layout");
TW_STATIC_ASSERT(sizeof(struct tw_flow_value) == 312, "tw_flow_value layout: seq, the state 8-aligned, seq_end");
TW_STATIC_ASSERT(offsetof(struct tw_flow_value, st) == 8, "tw_flow_value layout");
TW_STATIC_ASSERT(sizeof(struct tw_flow_end_rec) == 336, "tw_flow_end_rec layout");
TW_STATIC_ASSERT(TW_IDENT_EXIT < TW_IDENT_TYPE_SLOTS, "tw_ident_counters.emitted: one slot per event type");
TW_STATIC_ASSERT(sizeof(struct tw_ident_counters) == 8 * (TW_IDENT_TYPE_SLOTS + (int)TW_IDENT_DROP__MAX),
		 "tw_ident_counters layout");
#endif

#endif /* TAPWIRE_ABI_H */
