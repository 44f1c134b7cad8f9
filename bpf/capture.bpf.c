// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tapwire raw capture: TC clsact programs for ingress and egress. They parse
 * Ethernet (VLAN tags included), IPv4/IPv6 and TCP/UDP, apply the capture
 * filters, and copy each packet's metadata and L4 payload into this CPU's ring
 * buffer, split into records of at most TW_CHUNK_MAX payload bytes. They never
 * change or drop traffic: every path returns TC_ACT_UNSPEC, so the packet goes
 * on to the next filter as if tapwire were not there.
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
#define TW_MAX_VLAN_TAGS 2
#define TW_MAX_IPV6_EXT 4

/* Start-up knobs, set through the skeleton's rodata before load. */
const volatile __u64 tw_wakeup_bytes = 1u << 20; /* wake userspace once this much is queued */

/* One ring buffer per CPU; userspace creates them and fills this array. */
struct tw_ring {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096); /* template only: userspace creates the real rings */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1); /* set to the number of possible CPUs before load */
	__type(key, __u32);
	__array(values, struct tw_ring);
} tw_rings SEC(".maps");

struct tw_scratch {
	struct tw_pkt hdr;
	__u8 data[TW_CHUNK_MAX];
};

/* Where a record is assembled before bpf_ringbuf_output copies it (exact
 * size) into the ring. TC programs do not nest on one CPU (softirq, or
 * process context with BH off), so one buffer per CPU suffices. */
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

/* Runtime knobs, written by userspace at any time. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_settings);
} tw_settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* ifindex */
	__type(value, __u32); /* enum tw_iface_flag */
} tw_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tw_cidr4_key);
	__type(value, __u32); /* enum tw_rule_action */
} tw_cidr4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tw_cidr6_key);
	__type(value, __u32); /* enum tw_rule_action */
} tw_cidr6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16); /* port, host order */
	__type(value, __u32); /* enum tw_rule_action */
} tw_ports SEC(".maps");

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

static __always_inline int cidr_pass(struct tw_pkt *p, __u32 flags)
{
	int allowlist = flags & TW_SET_CIDR_ALLOWLIST;

	if (p->ip_version == 4) {
		struct tw_cidr4_key k = { .prefixlen = 32 };
		__u32 *a, *b;

		__builtin_memcpy(k.addr, p->saddr, 4);
		a = bpf_map_lookup_elem(&tw_cidr4, &k);
		__builtin_memcpy(k.addr, p->daddr, 4);
		b = bpf_map_lookup_elem(&tw_cidr4, &k);
		return rules_pass(a, b, allowlist);
	} else {
		struct tw_cidr6_key k = { .prefixlen = 128 };
		__u32 *a, *b;

		__builtin_memcpy(k.addr, p->saddr, 16);
		a = bpf_map_lookup_elem(&tw_cidr6, &k);
		__builtin_memcpy(k.addr, p->daddr, 16);
		b = bpf_map_lookup_elem(&tw_cidr6, &k);
		return rules_pass(a, b, allowlist);
	}
}

static __always_inline int port_pass(struct tw_pkt *p, __u32 flags)
{
	__u16 sport = p->sport, dport = p->dport;
	__u32 *a = bpf_map_lookup_elem(&tw_ports, &sport);
	__u32 *b = bpf_map_lookup_elem(&tw_ports, &dport);

	return rules_pass(a, b, flags & TW_SET_PORT_ALLOWLIST);
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

struct chunk_ctx {
	struct __sk_buff *skb;
	struct tw_scratch *s;
	struct tw_counters *cnt;
	void *ring;
	__u32 payload_off;
	__u32 cap_total;
	__u32 failed;
};

/* One record: chunk i of the packet's captured payload. A bpf_loop callback,
 * so the verifier checks it once instead of once per possible chunk. */
static long emit_chunk(__u64 i, struct chunk_ctx *c)
{
	struct tw_pkt *p = &c->s->hdr;
	__u32 off = (__u32)i * TW_CHUNK_MAX;
	__u32 len;
	__u64 n, wake;

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
	if (load(c->skb, c->payload_off + off, c->s->data, n) < 0) {
		count_drop(c->cnt, TW_DROP_LOAD_FAILED);
		c->failed = 1;
		return 1;
	}
	/* Batched notifications: wake the sensor only once enough is queued;
	 * its timer drains the rest. */
	wake = bpf_ringbuf_query(c->ring, BPF_RB_AVAIL_DATA) >= tw_wakeup_bytes ? BPF_RB_FORCE_WAKEUP
										    : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(c->ring, c->s, sizeof(struct tw_pkt) + n, wake) < 0) {
		count_drop(c->cnt, TW_DROP_RINGBUF_FULL);
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

static __always_inline int capture(struct __sk_buff *skb, __u8 direction)
{
	__u32 zero = 0;
	struct tw_counters *cnt = bpf_map_lookup_elem(&tw_counters, &zero);
	struct tw_settings *set = bpf_map_lookup_elem(&tw_settings, &zero);
	struct tw_scratch *s;
	struct tw_pkt *p;
	__u32 ifindex = skb->ifindex;
	__u32 set_flags = 0, snaplen = 0, if_flags = 0;
	__u32 fp_extra = 0; /* IPv4 id, or the first UDP payload bytes: see fingerprint() */
	__u32 l3off = 0, l4off, l3end, payload_off, payload_len, cap_total;
	__u16 proto;
	__u8 l4;
	__u32 *ifv;

	if (!cnt)
		return TC_ACT_UNSPEC;
	cnt->stat[TW_STAT_PACKETS_SEEN]++;
	if (set) {
		set_flags = set->flags;
		snaplen = set->snaplen;
	}
	ifv = bpf_map_lookup_elem(&tw_ifaces, &ifindex);
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
	if (skb->vlan_present) {
		p->vlan_tci = skb->vlan_tci;
		p->flags |= TW_PKT_F_VLAN;
	}

	/* L2: at TC, skb->data starts at the MAC header on Ethernet devices
	 * (ingress pushes it back before running the classifier). */
	proto = skb->protocol;
	if (!(if_flags & TW_IF_NO_L2)) {
		__u16 eth_proto;

		if (load(skb, 12, &eth_proto, sizeof(eth_proto)) < 0)
			goto bad_header;
		l3off = ETH_HLEN;
#pragma unroll
		for (int i = 0; i < TW_MAX_VLAN_TAGS; i++) {
			__u16 tag[2];

			if (eth_proto != bpf_htons(ETH_P_8021Q) && eth_proto != bpf_htons(ETH_P_8021AD))
				break;
			if (load(skb, l3off, tag, sizeof(tag)) < 0)
				goto bad_header;
			if (!(p->flags & TW_PKT_F_VLAN)) {
				p->vlan_tci = bpf_ntohs(tag[0]);
				p->flags |= TW_PKT_F_VLAN;
			}
			eth_proto = tag[1];
			l3off += 4;
		}
		proto = eth_proto;
	}

	/* L3 */
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		__u32 tot;

		if (load(skb, l3off, &ip, sizeof(ip)) < 0)
			goto bad_header;
		if (ip.version != 4 || ip.ihl < 5)
			goto bad_header;
		if (ip.frag_off & bpf_htons(0x1fff)) {
			count_drop(cnt, TW_DROP_IP_FRAGMENT);
			return TC_ACT_UNSPEC;
		}
		l4 = ip.protocol;
		fp_extra = ip.id;
		p->ip_version = 4;
		p->ttl = ip.ttl;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		l4off = l3off + ip.ihl * 4;
		tot = bpf_ntohs(ip.tot_len);
		/* tot_len 0: BIG TCP super-packet, the skb length is the truth */
		l3end = tot ? l3off + tot : skb->len;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		__u32 plen;

		if (load(skb, l3off, &ip6, sizeof(ip6)) < 0)
			goto bad_header;
		if (ip6.version != 6)
			goto bad_header;
		l4 = ip6.nexthdr;
		p->ip_version = 6;
		p->ttl = ip6.hop_limit;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		l4off = l3off + sizeof(ip6);
		plen = bpf_ntohs(ip6.payload_len);
		l3end = plen ? l4off + plen : skb->len;
#pragma unroll
		for (int i = 0; i < TW_MAX_IPV6_EXT; i++) {
			__u8 ext[2];

			if (l4 != IPPROTO_HOPOPTS && l4 != IPPROTO_ROUTING && l4 != IPPROTO_DSTOPTS &&
			    l4 != IPPROTO_FRAGMENT)
				break;
			if (load(skb, l4off, ext, sizeof(ext)) < 0)
				goto bad_header;
			if (l4 == IPPROTO_FRAGMENT) {
				__u16 fo;

				if (load(skb, l4off + 2, &fo, sizeof(fo)) < 0)
					goto bad_header;
				if (fo & bpf_htons(0xfff8)) {
					count_drop(cnt, TW_DROP_IP_FRAGMENT);
					return TC_ACT_UNSPEC;
				}
				l4off += 8;
			} else {
				l4off += (ext[1] + 1) * 8;
			}
			l4 = ext[0];
		}
	} else {
		cnt->stat[TW_STAT_NOT_TCP_UDP]++;
		return TC_ACT_UNSPEC;
	}
	if (l3end > skb->len) /* Ethernet padding is below l3end; a lie above it */
		l3end = skb->len;

	/* L4 */
	p->l4_proto = l4;
	if (l4 == IPPROTO_TCP) {
		struct tcphdr th;
		__u8 *raw = (__u8 *)&th;

		if (load(skb, l4off, &th, sizeof(th)) < 0)
			goto bad_header;
		if (th.doff < 5)
			goto bad_header;
		p->sport = bpf_ntohs(th.source);
		p->dport = bpf_ntohs(th.dest);
		p->seq = bpf_ntohl(th.seq);
		p->ack = bpf_ntohl(th.ack_seq);
		p->window = bpf_ntohs(th.window);
		p->tcp_flags = raw[13];
		payload_off = l4off + th.doff * 4;
		p->tcp_wscale = (p->tcp_flags & TW_TCP_SYN) ? tw_syn_wscale(skb, l4off + sizeof(th), th.doff * 4 - sizeof(th))
							    : TW_WSCALE_NONE;
	} else if (l4 == IPPROTO_UDP) {
		struct udphdr uh;

		if (load(skb, l4off, &uh, sizeof(uh)) < 0)
			goto bad_header;
		p->sport = bpf_ntohs(uh.source);
		p->dport = bpf_ntohs(uh.dest);
		payload_off = l4off + sizeof(uh);
	} else {
		cnt->stat[TW_STAT_NOT_TCP_UDP]++;
		return TC_ACT_UNSPEC;
	}
	if (payload_off > l3end)
		goto bad_header;
	payload_len = l3end - payload_off;
	p->payload_len = payload_len;

	if (l4 == IPPROTO_TCP && payload_len == 0 &&
	    !(p->tcp_flags & (TW_TCP_SYN | TW_TCP_FIN | TW_TCP_RST))) {
		cnt->stat[TW_STAT_EMPTY_ACK]++;
		return TC_ACT_UNSPEC;
	}

	/* Filters: nothing filtered out is ever copied. */
	if (((set_flags & TW_SET_CIDR_RULES) && !cidr_pass(p, set_flags)) ||
	    ((set_flags & TW_SET_PORT_RULES) && !port_pass(p, set_flags))) {
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
		__u32 *iv = bpf_map_lookup_elem(&tw_ifaces, &iif);

		if (iv && (*iv & TW_IF_CAPTURE)) {
			cnt->stat[TW_STAT_DUPLICATE]++;
			return TC_ACT_UNSPEC;
		}
	}
	if (l4 == IPPROTO_UDP && p->ip_version == 6 && payload_len)
		load(skb, payload_off, &fp_extra, payload_len < 4 ? 1 : 4);
	if (seen_elsewhere(p, fp_extra, bpf_ktime_get_ns())) {
		cnt->stat[TW_STAT_DUPLICATE]++;
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
	p->ts_ns = bpf_ktime_get_ns();

	__u32 cpu = bpf_get_smp_processor_id();
	void *ring = bpf_map_lookup_elem(&tw_rings, &cpu);

	if (!ring) {
		count_drop(cnt, TW_DROP_NO_RING);
		return TC_ACT_UNSPEC;
	}

	if (cap_total == 0) {
		/* SYN/FIN/RST or an empty datagram: metadata only */
		if (bpf_ringbuf_output(ring, p, sizeof(*p), BPF_RB_NO_WAKEUP) < 0) {
			count_drop(cnt, TW_DROP_RINGBUF_FULL);
			return TC_ACT_UNSPEC;
		}
		cnt->stat[TW_STAT_RECORDS]++;
	} else {
		struct chunk_ctx c = {
			.skb = skb, .s = s, .cnt = cnt, .ring = ring,
			.payload_off = payload_off, .cap_total = cap_total,
		};

		bpf_loop((cap_total + TW_CHUNK_MAX - 1) / TW_CHUNK_MAX, emit_chunk, &c, 0);
		if (c.failed)
			return TC_ACT_UNSPEC;
	}
	cnt->stat[TW_STAT_PACKETS_CAPTURED]++;
	return TC_ACT_UNSPEC;

bad_header:
	count_drop(cnt, TW_DROP_BAD_HEADER);
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
