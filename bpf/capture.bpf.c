// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tapwire raw capture: programs for the TC ingress and egress hooks (tcx
 * links, or cls_bpf filters on a clsact qdisc). They parse Ethernet (802.1Q
 * and 802.1ad tags included), IPv4/IPv6 (extension headers, AH) and TCP/UDP,
 * apply the capture filters, and copy each packet's metadata and L4 payload
 * into this CPU's capture ring, split into records of at most TW_CHUNK_MAX
 * payload bytes. Every packet not captured is counted under a reason
 * (tapwire_abi.h). They never change or drop traffic: every path returns
 * TC_ACT_UNSPEC (TCX_NEXT), so the packet goes on to the next program or
 * filter as if tapwire were not there.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "tapwire_abi.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#ifndef IPPROTO_MH
#define IPPROTO_MH 135
#endif
#define TW_IPPROTO_HIP 139
#define TW_IPPROTO_SHIM6 140
#define TW_IPPROTO_EXP1 253 /* RFC 3692 experimentation, extension header format (RFC 7045) */
#define TW_IPPROTO_EXP2 254
#define TW_GEN_MASK (TW_RULE_GENERATIONS - 1)
_Static_assert((TW_RULE_GENERATIONS & TW_GEN_MASK) == 0, "generations: a power of two");

/* Start-up knobs, set through the skeleton's rodata before load. */
const volatile __u64 tw_wakeup_bytes = 1u << 20; /* wake userspace once this much is queued */

/* The rule generation in force (see tapwire_abi.h, TW_RULE_GENERATIONS).
 * Userspace switches it with one aligned 4-byte store through the mmap'd
 * .bss; each packet reads it once. */
__u32 tw_active_gen = 0;

/* The capture rings: one per CPU (tapwire_abi.h, struct tw_cring_hdr).
 * No BTF value type: the sensor sets the value size before load
 * (TW_CRING_HDR + tw_cring_bytes + TW_CRING_SLACK). */
const volatile __u64 tw_cring_bytes = 1u << 20; /* the data area of each ring: a power of two */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1); /* set to the number of possible CPUs before load */
	__uint(key_size, sizeof(__u32));
	__uint(value_size, TW_CRING_HDR + (1u << 20) + TW_CRING_SLACK); /* set before load */
} tw_crings SEC(".maps");

/* The doorbell: a CPU whose ring fills past tw_wakeup_bytes puts its number
 * here once (when it crosses), which wakes the sensor; below that the
 * sensor's timer drains the rings. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, TW_DOORBELL_BYTES);
} tw_doorbell SEC(".maps");

/* Where a record's header is assembled before it is copied into the ring.
 * TC programs do not nest on one CPU (softirq, or process context with BH
 * off), so one buffer per CPU suffices. */
struct tw_scratch {
	struct tw_pkt hdr;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_scratch);
} tw_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_counters);
} tw_counters SEC(".maps");

/* The rule set, one generation per index (tapwire_abi.h). Settings: */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TW_RULE_GENERATIONS);
	__type(key, __u32);
	__type(value, struct tw_settings);
} tw_settings SEC(".maps");

/* The interface set: ifindex -> enum tw_iface_flag. */
struct tw_iface_set {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TW_MAX_IFACES);
	__type(key, __u32);
	__type(value, __u32);
} tw_ifaces_g0 SEC(".maps"), tw_ifaces_g1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, TW_RULE_GENERATIONS);
	__type(key, __u32);
	__array(values, struct tw_iface_set);
} tw_ifaces SEC(".maps") = {
	.values = { &tw_ifaces_g0, &tw_ifaces_g1 },
};

/* Address rules: prefix -> enum tw_rule_action. */
struct tw_cidr4_rules {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, TW_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tw_cidr4_key);
	__type(value, __u32);
} tw_cidr4_g0 SEC(".maps"), tw_cidr4_g1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, TW_RULE_GENERATIONS);
	__type(key, __u32);
	__array(values, struct tw_cidr4_rules);
} tw_cidr4 SEC(".maps") = {
	.values = { &tw_cidr4_g0, &tw_cidr4_g1 },
};

struct tw_cidr6_rules {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, TW_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tw_cidr6_key);
	__type(value, __u32);
} tw_cidr6_g0 SEC(".maps"), tw_cidr6_g1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, TW_RULE_GENERATIONS);
	__type(key, __u32);
	__array(values, struct tw_cidr6_rules);
} tw_cidr6 SEC(".maps") = {
	.values = { &tw_cidr6_g0, &tw_cidr6_g1 },
};

/* Port rules: port (host order) -> enum tw_rule_action. */
struct tw_port_rules {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TW_MAX_RULES);
	__type(key, __u16);
	__type(value, __u32);
} tw_ports_g0 SEC(".maps"), tw_ports_g1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, TW_RULE_GENERATIONS);
	__type(key, __u32);
	__array(values, struct tw_port_rules);
} tw_ports SEC(".maps") = {
	.values = { &tw_ports_g0, &tw_ports_g1 },
};

/* Pod targeting (tap.regex, tap.namespaces, tap.excludedNamespaces): the
 * addresses of the targeted pods, kept by the sensor as pods come and go. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tw_ip_key);
	__type(value, __u32);
} tw_targets SEC(".maps");

/* One packet crossing two interfaces of this node (a pod's veth and the
 * bridge, or two pods' veths) is captured once: where it is seen first.
 * The path through the node runs in one softirq on one CPU, so a small
 * per-CPU memory of the last packets captured recognises the second
 * sighting (same fingerprint, another interface, within microseconds). */
#define TW_SEEN_SLOTS 16
#define TW_SEEN_WINDOW_NS 1000000
struct tw_seen {
	__u64 fp[TW_SEEN_SLOTS];
	__u64 ts[TW_SEEN_SLOTS];
	__u32 ifindex[TW_SEEN_SLOTS];
	__u32 next;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_seen);
} tw_seen SEC(".maps");

/* Flow accounting (docs/FLOWS.md, tapwire_abi.h): one entry per TCP/UDP
 * flow, updated under its own lock (flow_lock); the sensor reads, writes and deletes
 * the entries. max_entries is set by the sensor before load
 * (tap.flows.maxFlows). Preallocated: an insert never allocates. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TW_FLOWS_DEFAULT_MAX);
	__type(key, struct tw_flow_key);
	__type(value, struct tw_flow_value);
} tw_flows SEC(".maps");

/* Flows ended in the kernel (a reused 4-tuple): struct tw_flow_end_rec. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, TW_FLOW_ENDS_RING_BYTES);
} tw_flow_ends SEC(".maps");

/* Per-CPU room for the flow update: the key, a new flow's first value
 * (built here, then inserted whole), and a reused flow's last state. */
struct tw_flow_scratch {
	struct tw_flow_end_rec end; /* end.key: the packet's flow key */
	struct tw_flow_value init;
	struct tw_flow_pkt pkt;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_flow_scratch);
} tw_flow_scratch SEC(".maps");

/* The one accessor for packet bytes: bounds-checked by the kernel, works on
 * non-linear skbs (GRO/GSO super-packets keep most payload in frags). */
static __always_inline int load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	return bpf_skb_load_bytes(skb, off, to, len);
}

static __always_inline void count_drop(struct tw_counters *c, enum tw_drop_reason r)
{
	c->drop[r]++;
}

/* Combines the verdicts of the two endpoints' rules: any deny wins; with an
 * allowlist, at least one endpoint must match an allow rule. */
static __always_inline int rules_pass(__u32 *a, __u32 *b, int allowlist)
{
	if ((a && *a == TW_RULE_DENY) || (b && *b == TW_RULE_DENY))
		return 0;
	if (allowlist && !(a && *a == TW_RULE_ALLOW) && !(b && *b == TW_RULE_ALLOW))
		return 0;
	return 1;
}

/* The address rules of generation gen. A generation's inner maps always
 * exist (static initialisation); if one could not be found, nothing passes:
 * the packet is counted as filtered rather than captured against its rules. */
static __always_inline int cidr_pass(struct tw_pkt *p, __u32 flags, __u32 gen)
{
	int allowlist = flags & TW_SET_CIDR_ALLOWLIST;

	if (p->ip_version == 4) {
		struct tw_cidr4_key k = { .prefixlen = 32 };
		void *rules = bpf_map_lookup_elem(&tw_cidr4, &gen);
		__u32 *a, *b;

		if (!rules)
			return 0;
		__builtin_memcpy(k.addr, p->saddr, 4);
		a = bpf_map_lookup_elem(rules, &k);
		__builtin_memcpy(k.addr, p->daddr, 4);
		b = bpf_map_lookup_elem(rules, &k);
		return rules_pass(a, b, allowlist);
	} else {
		struct tw_cidr6_key k = { .prefixlen = 128 };
		void *rules = bpf_map_lookup_elem(&tw_cidr6, &gen);
		__u32 *a, *b;

		if (!rules)
			return 0;
		__builtin_memcpy(k.addr, p->saddr, 16);
		a = bpf_map_lookup_elem(rules, &k);
		__builtin_memcpy(k.addr, p->daddr, 16);
		b = bpf_map_lookup_elem(rules, &k);
		return rules_pass(a, b, allowlist);
	}
}

static __always_inline int port_pass(struct tw_pkt *p, __u32 flags, __u32 gen)
{
	__u16 sport = p->sport, dport = p->dport;
	void *rules = bpf_map_lookup_elem(&tw_ports, &gen);

	if (!rules)
		return 0;
	return rules_pass(bpf_map_lookup_elem(rules, &sport), bpf_map_lookup_elem(rules, &dport),
			  flags & TW_SET_PORT_ALLOWLIST);
}

static __always_inline int target_pass(struct tw_pkt *p)
{
	struct tw_ip_key k = { .ip_version = p->ip_version };

	__builtin_memcpy(k.addr, p->saddr, 16);
	if (bpf_map_lookup_elem(&tw_targets, &k))
		return 1;
	__builtin_memcpy(k.addr, p->daddr, 16);
	return bpf_map_lookup_elem(&tw_targets, &k) != 0;
}

/* What tells one packet from another on its way through the node: the
 * 5-tuple, TCP sequence and acknowledgement numbers, flags, window and
 * length; for UDP, the IPv4 id or the first payload bytes. */
static __always_inline __u64 fingerprint(struct tw_pkt *p, __u32 extra)
{
	__u64 h = 0xcbf29ce484222325ull;
	__u64 w[8];

	__builtin_memcpy(&w[0], p->saddr, 16);
	__builtin_memcpy(&w[2], p->daddr, 16);
	w[4] = ((__u64)p->sport << 48) | ((__u64)p->dport << 32) | ((__u64)p->l4_proto << 24) | p->tcp_flags;
	w[5] = ((__u64)p->seq << 32) | p->ack;
	w[6] = ((__u64)p->payload_len << 32) | p->window;
	w[7] = extra;
#pragma unroll
	for (int i = 0; i < 8; i++)
		h = (h ^ w[i]) * 0x100000001b3ull;
	return h;
}

/* 1 if this packet was captured on another interface of this node just now;
 * otherwise remembers it and returns 0. */
static __always_inline int seen_elsewhere(struct tw_pkt *p, __u32 extra, __u64 now)
{
	__u32 zero = 0;
	struct tw_seen *s = bpf_map_lookup_elem(&tw_seen, &zero);
	__u64 fp = fingerprint(p, extra);

	if (!s)
		return 0;
#pragma unroll
	for (int i = 0; i < TW_SEEN_SLOTS; i++) {
		if (s->fp[i] == fp && s->ifindex[i] != p->ifindex && now - s->ts[i] < TW_SEEN_WINDOW_NS)
			return 1;
	}
	__u32 slot = s->next & (TW_SEEN_SLOTS - 1);
	s->fp[slot] = fp;
	s->ts[slot] = now;
	s->ifindex[slot] = p->ifindex;
	s->next = slot + 1;
	return 0;
}

_Static_assert(TW_CHUNK_MAX == 0x4000, "emit_chunk's mask assumes 16 KiB chunks");

/* Appends one record to this CPU's capture ring: p, then n payload bytes
 * read from the packet at payload_off (none if n is 0). The record is
 * written in place and published with one atomic add to prod: no lock, no copy
 * but the packet's. Returns 0, or -1 with the drop counted. */
static __always_inline int cring_put(struct __sk_buff *skb, __u8 *ring, const struct tw_pkt *p, __u32 payload_off,
				     __u64 n, struct tw_counters *cnt)
{
	struct tw_cring_hdr *h = (struct tw_cring_hdr *)ring;
	__u8 *data = ring + TW_CRING_HDR;
	const __u64 bytes = tw_cring_bytes, mask = tw_cring_bytes - 1;
	__u64 prod = h->prod, cons = *(volatile __u64 *)&h->cons;
	__u64 size = (sizeof(struct tw_cring_rec) + sizeof(struct tw_pkt) + n + 7) & ~7ull;
	__u64 off = prod & mask, skip = 0, next, published;
	struct tw_cring_rec *rec;

	if (off + size > bytes)
		skip = bytes - off;
	next = prod + skip + size;
	if (next - cons > bytes) {
		count_drop(cnt, TW_DROP_RINGBUF_FULL);
		return -1;
	}
	if (skip) {
		rec = (struct tw_cring_rec *)(data + (off & mask & ~7ull));
		rec->len = (__u32)(skip - sizeof(*rec)) | TW_CRING_SKIP;
		rec->type = 0;
		rec->flags = 0;
		off = 0;
	}
	rec = (struct tw_cring_rec *)(data + (off & mask & ~7ull));
	rec->len = (__u32)(sizeof(struct tw_pkt) + n);
	rec->type = 1; /* TW_REC_PACKET */
	rec->flags = 0;
	__builtin_memcpy(rec + 1, p, sizeof(*p));
	/* Real time in the ring (the segments hold it); the programs keep the
	 * monotonic clock for their own use (duplicates, flows). */
	((struct tw_pkt *)(rec + 1))->ts_ns = p->ts_ns + h->real_off;
	if (n && load(skb, payload_off, (__u8 *)(rec + 1) + sizeof(*p), n) < 0) {
		count_drop(cnt, TW_DROP_LOAD_FAILED);
		return -1;
	}
	/* Publish: the record's bytes before prod (a fully ordered atomic, so
	 * also on weakly ordered CPUs); the sensor loads prod with acquire. */
	published = __sync_fetch_and_add(&h->prod, next - prod);
	asm volatile("" : : "r"(published)); /* used: the fetching (fully ordered) form of the add */
	/* Ring the doorbell when this record took the ring past the threshold. */
	if (next - cons >= tw_wakeup_bytes && prod - cons < tw_wakeup_bytes) {
		__u32 cpu = bpf_get_smp_processor_id();

		bpf_ringbuf_output(&tw_doorbell, &cpu, sizeof(cpu), BPF_RB_FORCE_WAKEUP);
	}
	return 0;
}

struct chunk_ctx {
	struct __sk_buff *skb;
	struct tw_pkt *p;
	struct tw_counters *cnt;
	__u8 *ring;
	__u32 payload_off;
	__u32 cap_total;
	__u32 failed;
};

/* One record: chunk i of the packet's captured payload. A bpf_loop callback,
 * so the verifier checks it once instead of once per possible chunk. */
static long emit_chunk(__u64 i, struct chunk_ctx *c)
{
	struct tw_pkt *p = c->p;
	__u32 off = (__u32)i * TW_CHUNK_MAX;
	__u32 len;
	__u64 n;

	if (i >= TW_MAX_CHUNKS || off >= c->cap_total)
		return 1;
	len = c->cap_total - off;
	if (len > TW_CHUNK_MAX)
		len = TW_CHUNK_MAX;
	p->chunk_off = off;
	p->cap_len = len;
	if (i > 0)
		p->flags |= TW_PKT_F_CONTINUATION;
	if (off + len < c->cap_total)
		p->flags |= TW_PKT_F_MORE;
	else
		p->flags &= ~TW_PKT_F_MORE;
	/* verifier workaround: the compiler tests a copy of len, so the helpers
	 * would see it unbounded; ((len - 1) & (TW_CHUNK_MAX - 1)) + 1 is len
	 * itself for 1 <= len <= TW_CHUNK_MAX and gives the verifier that range
	 * on the register the helpers get. */
	n = len;
	asm volatile("%[n] += -1\n\t%[n] &= 0x3fff\n\t%[n] += 1" : [n] "+r"(n));
	if (cring_put(c->skb, c->ring, p, c->payload_off + off, n, c->cnt) < 0) {
		c->failed = 1;
		return 1;
	}
	c->cnt->stat[TW_STAT_RECORDS]++;
	c->cnt->stat[TW_STAT_BYTES_CAPTURED] += len;
	return 0;
}

/* The window scale option of a SYN (RFC 7323), so that exports let tools
 * like Wireshark scale the windows of the data packets that follow. */
/* A global (not inlined, not static) function: the verifier checks it once,
 * on its own, instead of once per path through capture(). */
__noinline int tw_syn_wscale(struct __sk_buff *skb, __u32 opt_off, __u32 opt_len)
{
	if (!skb)
		return TW_WSCALE_NONE;
	__u32 i = 0;

	/* Byte by byte through the helper: SYNs are rare, and reading a stack
	 * buffer at a variable index is what the verifier likes least. */
	for (int k = 0; k < 20; k++) { /* a bounded loop: the verifier walks it */
		__u8 kv[3];

		if (i + 1 > opt_len || load(skb, opt_off + i, kv, 1) < 0 || kv[0] == 0)
			break;
		if (kv[0] == 1) { /* NOP */
			i++;
			continue;
		}
		if (i + 2 > opt_len || load(skb, opt_off + i, kv, 2) < 0 || kv[1] < 2)
			break;
		if (kv[0] == 3 && kv[1] == 3 && i + 3 <= opt_len && load(skb, opt_off + i, kv, 3) == 0)
			return kv[2];
		i += kv[1];
	}
	return TW_WSCALE_NONE;
}

/* The walk from the IP header to the L4 header: IPv6 extension headers and
 * IPsec AH (IPv4 and IPv6). */
struct tw_walk {
	__u32 off; /* in: the first header after the IP header; out: the L4 header */
	__u32 end; /* the IP packet's end */
	__u8 proto; /* in: the IP header's protocol / next header; out: the L4 protocol */
	__u8 ipv6; /* IPv6 extension headers apply */
	__u8 first_fragment; /* out: an IPv6 fragment header with offset 0 and M set */
	__u8 pad;
};

/* tw_walk_ext() results: TW_WALK_OK, or a reason to count. */
#define TW_WALK_OK 0
#define TW_WALK_DROP 0x100 /* | enum tw_drop_reason */
#define TW_WALK_STAT 0x200 /* | enum tw_stat */

static __always_inline int is_ipv6_ext(__u8 proto)
{
	return proto == IPPROTO_HOPOPTS || proto == IPPROTO_ROUTING || proto == IPPROTO_DSTOPTS ||
	       proto == IPPROTO_MH || proto == TW_IPPROTO_HIP || proto == TW_IPPROTO_SHIM6 ||
	       proto == TW_IPPROTO_EXP1 || proto == TW_IPPROTO_EXP2;
}

/* A global (not inlined, not static) function: the verifier checks the walk
 * once, on its own, instead of once per path through capture(). Walks at
 * most TW_MAX_EXT_HEADERS headers; a packet with more is counted
 * (TW_DROP_IPV6_EXT_LIMIT), never guessed at. */
__noinline int tw_walk_ext(struct __sk_buff *skb, struct tw_walk *w)
{
	/* verifier workaround: a global function's pointer arguments may be
	 * NULL as far as the verifier knows, whatever the caller passes. */
	if (!skb || !w)
		return TW_WALK_DROP | TW_DROP_NO_SCRATCH;
	__u32 off = w->off, end = w->end;
	__u8 proto = w->proto;

	for (int i = 0; i < TW_MAX_EXT_HEADERS; i++) { /* a bounded loop: the verifier walks it */
		__u8 h[4];

		if (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
			break;
		if (proto == IPPROTO_ESP)
			return TW_WALK_STAT | TW_STAT_IPSEC_ESP;
		if (proto == IPPROTO_AH) { /* RFC 4302: length in 4-byte units, minus 2 */
			if (load(skb, off, h, 2) < 0 || h[1] < 1 || off + (h[1] + 2) * 4 > end)
				return TW_WALK_DROP | TW_DROP_BAD_AH_HEADER;
			off += (h[1] + 2) * 4;
			proto = h[0];
			continue;
		}
		if (!w->ipv6)
			break;
		if (proto == IPPROTO_FRAGMENT) {
			__u16 fo;

			if (off + 8 > end || load(skb, off, h, 4) < 0)
				return TW_WALK_DROP | TW_DROP_BAD_IPV6_EXT_HEADER;
			fo = ((__u16)h[2] << 8) | h[3];
			if (fo & 0xfff8) /* not the first fragment: no L4 header here */
				return TW_WALK_DROP | TW_DROP_IP_FRAGMENT;
			if (fo & 1) /* M: more fragments follow (else an atomic fragment, RFC 6946: whole) */
				w->first_fragment = 1;
			off += 8;
			proto = h[0];
			continue;
		}
		if (!is_ipv6_ext(proto))
			break; /* ICMPv6, no next header, ...: not TCP/UDP */
		if (load(skb, off, h, 2) < 0 || off + (h[1] + 1) * 8 > end)
			return TW_WALK_DROP | TW_DROP_BAD_IPV6_EXT_HEADER;
		off += (h[1] + 1) * 8;
		proto = h[0];
	}
	if (proto == IPPROTO_AH || (w->ipv6 && (proto == IPPROTO_FRAGMENT || is_ipv6_ext(proto))))
		return TW_WALK_DROP | TW_DROP_IPV6_EXT_LIMIT;
	w->off = off;
	w->proto = proto;
	return TW_WALK_OK;
}

/* Counts a tw_walk_ext() result that is not TW_WALK_OK. */
static __always_inline void count_walk(struct tw_counters *c, int rc)
{
	__u32 r = rc & 0xff;

	if ((rc & TW_WALK_STAT) && r < TW_STAT__MAX)
		c->stat[r]++;
	else if (r < TW_DROP__MAX)
		c->drop[r]++;
	else
		c->drop[TW_DROP_NO_SCRATCH]++; /* cannot happen: a result without a reason */
}

/* 1 if address a sorts before b (as numbers: network byte order). */
static __always_inline int addr_lt(const __u8 *a, const __u8 *b, int *eq)
{
	__u64 a0, a1, b0, b1;

	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	a0 = bpf_be64_to_cpu(a0);
	a1 = bpf_be64_to_cpu(a1);
	b0 = bpf_be64_to_cpu(b0);
	b1 = bpf_be64_to_cpu(b1);
	*eq = a0 == b0 && a1 == b1;
	return a0 < b0 || (a0 == b0 && a1 < b1);
}

/* The flow entry's lock (tapwire_abi.h, struct tw_flow_value): seq odd
 * while held, taken with a compare-and-swap, given back with an atomic add;
 * both are fully ordered, so the entry's stores stay inside. Held for the
 * few hundred instructions of one update, so another CPU seldom waits; one
 * that cannot take it in TW_FLOW_LOCK_TRIES leaves its packet unaccounted
 * (TW_STAT_FLOW_UNTRACKED) rather than spin. */
#define TW_FLOW_LOCK_TRIES 64

static __always_inline int flow_lock(struct tw_flow_value *v, __u32 *held)
{
#pragma nounroll
	for (int i = 0; i < TW_FLOW_LOCK_TRIES; i++) {
		__u32 s = *(volatile __u32 *)&v->seq;

		if (!(s & 1) && __sync_val_compare_and_swap(&v->seq, s, s + 1) == s) {
			*(volatile __u32 *)&v->seq_end = s + 1;
			*held = s + 1;
			return 0;
		}
	}
	return -1;
}

static __always_inline void flow_unlock(struct tw_flow_value *v, __u32 held)
{
	__u32 old;

	*(volatile __u32 *)&v->seq_end = held + 1;
	old = __sync_fetch_and_add(&v->seq, 1);
	asm volatile("" : : "r"(old)); /* used: the fetching (fully ordered) form of the add */
}

/*
 * Accounts one TCP or UDP packet in its flow (tw_flows): one lookup and the
 * entry's lock in the common case; a new flow is built on the per-CPU
 * scratch and inserted whole (BPF_NOEXIST: a flow another CPU inserted
 * first is updated instead). A full table leaves the packet unaccounted
 * (TW_STAT_FLOW_UNTRACKED); it is still captured. A global function: the
 * verifier checks it once, on its own.
 */
__noinline int tw_flow_account(struct tw_pkt *p, struct tw_counters *cnt, __u32 wire_len)
{
	if (!p || !cnt)
		return 0;
	__u32 zero = 0;
	struct tw_flow_scratch *sc = bpf_map_lookup_elem(&tw_flow_scratch, &zero);
	struct tw_flow_key *k;
	struct tw_flow_pkt *fp;
	struct tw_flow_value *v;
	__u8 l4 = p->l4_proto;
	int eq, src_a, rc, reused = 0, is_new = 0;
	__u32 held = 0;
	long err;

	if (!sc)
		return 0;
	k = &sc->end.key;
	fp = &sc->pkt;
	src_a = addr_lt(p->saddr, p->daddr, &eq);
	if (eq)
		src_a = p->sport <= p->dport;
	k->ip_version = p->ip_version;
	k->l4_proto = l4;
	k->pad = 0;
	if (src_a) {
		k->port_a = p->sport;
		k->port_b = p->dport;
		__builtin_memcpy(k->addr_a, p->saddr, 16);
		__builtin_memcpy(k->addr_b, p->daddr, 16);
	} else {
		k->port_a = p->dport;
		k->port_b = p->sport;
		__builtin_memcpy(k->addr_a, p->daddr, 16);
		__builtin_memcpy(k->addr_b, p->saddr, 16);
	}
	fp->ts_ns = p->ts_ns;
	fp->wire_len = wire_len;
	fp->payload_len = p->payload_len;
	fp->seq = p->seq;
	fp->ack = p->ack;
	fp->window = p->window;
	fp->ifindex = p->ifindex;
	fp->sport = p->sport;
	fp->dport = p->dport;
	fp->tcp_flags = p->tcp_flags;
	fp->side = src_a ? TW_SIDE_A : TW_SIDE_B;
	fp->pad[0] = fp->pad[1] = 0;

	v = bpf_map_lookup_elem(&tw_flows, k);
	if (!v) {
		/* A new flow: its first state built on the scratch and inserted
		 * whole; then counted under the lock like any other packet (a
		 * packet of another CPU may come first: both are counted). */
		__builtin_memset(&sc->init, 0, sizeof(sc->init));
		tw_flow_init(&sc->init.st, fp, l4);
		err = bpf_map_update_elem(&tw_flows, k, &sc->init, BPF_NOEXIST);
		if (err == 0)
			cnt->stat[TW_STAT_FLOWS_CREATED]++;
		else if (err != -17 /* EEXIST: another CPU inserted it first */)
			goto untracked;
		is_new = err == 0;
		v = bpf_map_lookup_elem(&tw_flows, k);
		if (!v) /* the sensor deleted it already */
			goto untracked;
	}

	if (flow_lock(v, &held) < 0)
		goto untracked;
	if (l4 == IPPROTO_TCP) {
		/* At most twice: a SYN with a new ISN (TW_FLOW_REUSE) ends the
		 * old flow, and the packet starts the new one in the same entry. */
#pragma nounroll
		for (int pass = 0; pass < 2; pass++) {
			rc = tw_flow_tcp_update(&v->st, fp, is_new);
			if (rc != TW_FLOW_REUSE || reused)
				break;
			__builtin_memcpy(&sc->end.st, &v->st, sizeof(v->st));
			__builtin_memset(&v->st, 0, sizeof(v->st));
			tw_flow_init(&v->st, fp, l4);
			is_new = 1;
			reused = 1;
		}
	} else {
		tw_flow_udp_update(&v->st, fp);
	}
	flow_unlock(v, held);
	if (reused) {
		cnt->stat[TW_STAT_FLOWS_CREATED]++;
		if (bpf_ringbuf_output(&tw_flow_ends, &sc->end, sizeof(sc->end), 0) < 0)
			cnt->stat[TW_STAT_FLOW_ENDS_LOST]++;
	}
	return 0;
untracked:
	cnt->stat[TW_STAT_FLOW_UNTRACKED]++;
	return 0;
}

static __always_inline int capture(struct __sk_buff *skb, __u8 direction)
{
	__u32 zero = 0;
	/* One read of the generation per packet: every rule below comes from
	 * it, so a reload never shows a packet half of each rule set. */
	__u32 gen = *(volatile __u32 *)&tw_active_gen & TW_GEN_MASK;
	struct tw_counters *cnt = bpf_map_lookup_elem(&tw_counters, &zero);
	struct tw_settings *set = bpf_map_lookup_elem(&tw_settings, &gen);
	void *ifaces = bpf_map_lookup_elem(&tw_ifaces, &gen);
	struct tw_scratch *s;
	struct tw_pkt *p;
	struct tw_walk w = {};
	__u32 ifindex = skb->ifindex;
	__u32 set_flags = 0, snaplen = 0, if_flags = 0;
	__u32 fp_extra = 0; /* IPv4 id, or the first UDP payload bytes: see fingerprint() */
	__u32 l3off = 0, l3end, payload_off, payload_len, cap_total;
	__u16 proto;
	__u8 l4;
	__u32 *ifv;
	int rc, flows, empty_ack;

	if (!cnt)
		return TC_ACT_UNSPEC;
	cnt->stat[TW_STAT_PACKETS_SEEN]++;
	if (set) {
		set_flags = set->flags;
		snaplen = set->snaplen;
	}
	ifv = ifaces ? bpf_map_lookup_elem(ifaces, &ifindex) : 0;
	if (ifv)
		if_flags = *ifv;
	if ((set_flags & TW_SET_IFACE_ALLOWLIST) && !(if_flags & TW_IF_CAPTURE)) {
		cnt->stat[TW_STAT_FILTERED]++;
		return TC_ACT_UNSPEC;
	}

	s = bpf_map_lookup_elem(&tw_scratch, &zero);
	if (!s) {
		count_drop(cnt, TW_DROP_NO_SCRATCH);
		return TC_ACT_UNSPEC;
	}
	p = &s->hdr;
	__builtin_memset(p, 0, sizeof(*p));
	p->direction = direction;
	p->ifindex = ifindex;
	if (skb->vlan_present) { /* a tag the driver or the stack took out of the packet */
		p->vlan_tci = skb->vlan_tci;
		p->flags |= TW_PKT_F_VLAN;
	}

	/* L2: at TC, skb->data starts at the MAC header on Ethernet devices
	 * (ingress pushes it back before running the classifier). Devices
	 * without one (tun, wireguard, ...) start at L3, and skb->protocol says
	 * which. */
	proto = skb->protocol;
	if (!(if_flags & TW_IF_NO_L2)) {
		__u16 eth_proto;

		if (load(skb, 12, &eth_proto, sizeof(eth_proto)) < 0) {
			count_drop(cnt, TW_DROP_BAD_L2_HEADER);
			return TC_ACT_UNSPEC;
		}
		l3off = ETH_HLEN;
#pragma unroll
		for (int i = 0; i < TW_MAX_VLAN_TAGS; i++) {
			__u16 tag[2];

			if (eth_proto != bpf_htons(ETH_P_8021Q) && eth_proto != bpf_htons(ETH_P_8021AD))
				break;
			if (load(skb, l3off, tag, sizeof(tag)) < 0) {
				count_drop(cnt, TW_DROP_BAD_VLAN_HEADER);
				return TC_ACT_UNSPEC;
			}
			if (!(p->flags & TW_PKT_F_VLAN)) { /* the outermost tag */
				p->vlan_tci = bpf_ntohs(tag[0]);
				p->flags |= TW_PKT_F_VLAN;
			}
			eth_proto = tag[1];
			l3off += 4;
		}
		if (eth_proto == bpf_htons(ETH_P_8021Q) || eth_proto == bpf_htons(ETH_P_8021AD)) {
			count_drop(cnt, TW_DROP_VLAN_LIMIT);
			return TC_ACT_UNSPEC;
		}
		proto = eth_proto;
	}

	/* L3 */
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		__u32 tot, hlen;
		__u16 frag;

		if (load(skb, l3off, &ip, sizeof(ip)) < 0 || ip.version != 4 || ip.ihl < 5)
			goto bad_ipv4;
		hlen = ip.ihl * 4;
		tot = bpf_ntohs(ip.tot_len);
		/* tot_len 0: BIG TCP super-packet, the skb length is the truth */
		if ((tot && tot < hlen) || l3off + hlen > skb->len)
			goto bad_ipv4;
		frag = bpf_ntohs(ip.frag_off);
		if (frag & 0x1fff) { /* not the first fragment: no L4 header here */
			count_drop(cnt, TW_DROP_IP_FRAGMENT);
			return TC_ACT_UNSPEC;
		}
		if (frag & 0x2000) /* MF with offset 0: the first fragment */
			p->flags |= TW_PKT_F_FRAGMENT;
		fp_extra = ip.id;
		p->ip_version = 4;
		p->ttl = ip.ttl;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		w.proto = ip.protocol;
		w.off = l3off + hlen;
		l3end = tot ? l3off + tot : skb->len;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		__u32 plen;

		if (load(skb, l3off, &ip6, sizeof(ip6)) < 0 || ip6.version != 6) {
			count_drop(cnt, TW_DROP_BAD_IPV6_HEADER);
			return TC_ACT_UNSPEC;
		}
		p->ip_version = 6;
		p->ttl = ip6.hop_limit;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		w.proto = ip6.nexthdr;
		w.off = l3off + sizeof(ip6);
		w.ipv6 = 1;
		plen = bpf_ntohs(ip6.payload_len);
		/* payload_len 0: a jumbogram or BIG TCP super-packet */
		l3end = plen ? w.off + plen : skb->len;
	} else {
		cnt->stat[TW_STAT_NOT_TCP_UDP]++;
		return TC_ACT_UNSPEC;
	}
	if (l3end > skb->len) /* Ethernet padding is below l3end; a lie above it */
		l3end = skb->len;
	w.end = l3end;
	rc = tw_walk_ext(skb, &w);
	if (rc != TW_WALK_OK) {
		count_walk(cnt, rc);
		return TC_ACT_UNSPEC;
	}
	if (w.first_fragment)
		p->flags |= TW_PKT_F_FRAGMENT;
	l4 = w.proto;

	/* L4 */
	p->l4_proto = l4;
	if (l4 == IPPROTO_TCP) {
		struct tcphdr th;
		__u8 *raw = (__u8 *)&th;

		if (load(skb, w.off, &th, sizeof(th)) < 0 || th.doff < 5)
			goto bad_tcp;
		payload_off = w.off + th.doff * 4;
		if (payload_off > l3end)
			goto bad_tcp;
		p->sport = bpf_ntohs(th.source);
		p->dport = bpf_ntohs(th.dest);
		p->seq = bpf_ntohl(th.seq);
		p->ack = bpf_ntohl(th.ack_seq);
		p->window = bpf_ntohs(th.window);
		p->tcp_flags = raw[13];
		p->tcp_wscale = (p->tcp_flags & TW_TCP_SYN) ? tw_syn_wscale(skb, w.off + sizeof(th), th.doff * 4 - sizeof(th))
							    : TW_WSCALE_NONE;
	} else if (l4 == IPPROTO_UDP) {
		struct udphdr uh;

		payload_off = w.off + sizeof(uh);
		if (payload_off > l3end || load(skb, w.off, &uh, sizeof(uh)) < 0) {
			count_drop(cnt, TW_DROP_BAD_UDP_HEADER);
			return TC_ACT_UNSPEC;
		}
		p->sport = bpf_ntohs(uh.source);
		p->dport = bpf_ntohs(uh.dest);
	} else if (l4 == IPPROTO_ICMP || l4 == IPPROTO_ICMPV6) {
		/* The whole ICMP message is the payload: its header says what
		 * it is (echo, an error with the header of the packet it is
		 * about); no ports. */
		payload_off = w.off;
	} else {
		cnt->stat[TW_STAT_NOT_TCP_UDP]++;
		return TC_ACT_UNSPEC;
	}
	payload_len = l3end - payload_off;
	p->payload_len = payload_len;

	/* Flow accounting (TW_SET_FLOWS_TCP/UDP): after the filters, pod
	 * targeting and the duplicate check, payload-less ACKs included. */
	flows = (l4 == IPPROTO_TCP && (set_flags & TW_SET_FLOWS_TCP)) ||
		(l4 == IPPROTO_UDP && (set_flags & TW_SET_FLOWS_UDP));
	empty_ack = l4 == IPPROTO_TCP && payload_len == 0 &&
		    !(p->tcp_flags & (TW_TCP_SYN | TW_TCP_FIN | TW_TCP_RST));
	if (empty_ack && !flows) { /* not stored, and not accounted: done */
		cnt->stat[TW_STAT_EMPTY_ACK]++;
		return TC_ACT_UNSPEC;
	}

	/* Filters: nothing filtered out is ever copied. */
	if (((set_flags & TW_SET_CIDR_RULES) && !cidr_pass(p, set_flags, gen)) ||
	    ((set_flags & TW_SET_PORT_RULES) && (l4 == IPPROTO_TCP || l4 == IPPROTO_UDP) &&
	     !port_pass(p, set_flags, gen))) {
		cnt->stat[TW_STAT_FILTERED]++;
		return TC_ACT_UNSPEC;
	}
	if ((set_flags & TW_SET_TARGETS) && !target_pass(p)) {
		cnt->stat[TW_STAT_NOT_TARGETED]++;
		return TC_ACT_UNSPEC;
	}

	/* Seen already on this node? Forwarded packets leave through an
	 * interface after entering through one we capture at ingress; bridged
	 * ones may pass two ingress hooks (a pod's veth, then the bridge). The
	 * filters above depend on the packet alone, so both sightings got the
	 * same verdict and the first one was kept. */
	if (direction == TW_DIR_EGRESS && skb->ingress_ifindex && skb->ingress_ifindex != ifindex) {
		__u32 iif = skb->ingress_ifindex;
		__u32 *iv = ifaces ? bpf_map_lookup_elem(ifaces, &iif) : 0;

		if (iv && (*iv & TW_IF_CAPTURE)) {
			cnt->stat[TW_STAT_DUPLICATE]++;
			return TC_ACT_UNSPEC;
		}
	}
	if ((l4 == IPPROTO_UDP || l4 == IPPROTO_ICMPV6) && p->ip_version == 6 && payload_len)
		load(skb, payload_off, &fp_extra, payload_len < 4 ? 1 : 4);
	/* One clock read per packet: the duplicate check, the flow and the record. */
	p->ts_ns = bpf_ktime_get_ns();
	if (seen_elsewhere(p, fp_extra, p->ts_ns)) {
		cnt->stat[TW_STAT_DUPLICATE]++;
		return TC_ACT_UNSPEC;
	}
	if (flows)
		tw_flow_account(p, cnt, skb->len);
	if (empty_ack) { /* counted in its flow; not stored, by design */
		cnt->stat[TW_STAT_EMPTY_ACK]++;
		return TC_ACT_UNSPEC;
	}

	cap_total = payload_len;
	if (snaplen && cap_total > snaplen)
		cap_total = snaplen;
	if (cap_total > TW_MAX_CHUNKS * TW_CHUNK_MAX)
		cap_total = TW_MAX_CHUNKS * TW_CHUNK_MAX;
	if (cap_total < payload_len) {
		p->flags |= TW_PKT_F_TRUNCATED;
		cnt->stat[TW_STAT_TRUNCATED]++;
	}

	__u32 cpu = bpf_get_smp_processor_id();
	__u8 *ring = bpf_map_lookup_elem(&tw_crings, &cpu);

	if (!ring) {
		count_drop(cnt, TW_DROP_NO_RING);
		return TC_ACT_UNSPEC;
	}

	if (cap_total == 0) {
		/* SYN/FIN/RST or an empty datagram: metadata only */
		if (cring_put(skb, ring, p, 0, 0, cnt) < 0)
			return TC_ACT_UNSPEC;
		cnt->stat[TW_STAT_RECORDS]++;
	} else {
		struct chunk_ctx c = {
			.skb = skb, .p = p, .cnt = cnt, .ring = ring,
			.payload_off = payload_off, .cap_total = cap_total,
		};

		bpf_loop((cap_total + TW_CHUNK_MAX - 1) / TW_CHUNK_MAX, emit_chunk, &c, 0);
		if (c.failed)
			return TC_ACT_UNSPEC;
	}
	cnt->stat[TW_STAT_PACKETS_CAPTURED]++;
	if (p->flags & TW_PKT_F_FRAGMENT)
		cnt->stat[TW_STAT_FIRST_FRAGMENTS]++;
	return TC_ACT_UNSPEC;

bad_ipv4:
	count_drop(cnt, TW_DROP_BAD_IPV4_HEADER);
	return TC_ACT_UNSPEC;
bad_tcp:
	count_drop(cnt, TW_DROP_BAD_TCP_HEADER);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int tw_ingress(struct __sk_buff *skb)
{
	return capture(skb, TW_DIR_INGRESS);
}

SEC("tc")
int tw_egress(struct __sk_buff *skb)
{
	return capture(skb, TW_DIR_EGRESS);
}
