// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tapwire process identity (docs/IDENTITY.md, "Process identity"): which
 * process and cgroup own the sockets whose traffic the capture programs see.
 *
 *   cgroup/sock_create   the creator (tgid, pid, comm, cgroup) into the
 *                        socket's local storage
 *   cgroup_skb in/egress first packet of a socket, or of an unconnected UDP
 *                        socket at a new local address: TW_IDENT_SOCK_OPEN
 *                        with the tuple as the socket sees it
 *   cgroup/sock_release  TW_IDENT_SOCK_CLOSE for announced sockets
 *   raw_tp sched_process_exec / sched_process_exit: TW_IDENT_EXEC / _EXIT
 *
 * Only program types that locked-down kernels allow: no kprobes, no fentry.
 * The packet programs never drop or change traffic: every path returns 1.
 * Fields of kernel structures are read through CO-RE, so the object loads on
 * kernels other than the one whose BTF built it.
 */
#include "vmlinux.h"
/* tapwire_abi.h includes <linux/types.h> for its fixed-width types, which
 * vmlinux.h already defines (and the uapi headers define differently): claim
 * its include guard so that only vmlinux.h's definitions are seen. */
#define _LINUX_TYPES_H
#include "tapwire_abi.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* uapi constants that vmlinux.h (BTF: types only, no macros) lacks */
#define TW_AF_INET 2
#define TW_AF_INET6 10
#define TW_SOCK_STREAM 1
#define TW_SOCK_DGRAM 2
#define TW_ETH_P_IP 0x0800
#define TW_ETH_P_IPV6 0x86DD
#define TW_IP6_NEXTHDR_HOP 0
#define TW_IP6_NEXTHDR_ROUTING 43
#define TW_IP6_NEXTHDR_FRAGMENT 44
#define TW_IP6_NEXTHDR_DEST 60
#define TW_MAX_IPV6_EXT 4
/* Local addresses remembered per unconnected UDP socket: a server bound to
 * 0.0.0.0 answering on more addresses than this is announced again as it
 * cycles through them. */
#define TW_UDP_LOCAL_SLOTS 4

/* Start-up knobs, set through the skeleton's rodata before load. */
const volatile __u64 tw_ident_wakeup_bytes = 64 * 1024; /* wake userspace once this much is queued */
/* Whether cgroup_skb programs may call bpf_get_netns_cookie (only kernels
 * since 2025 let them; userspace probes it). A constant at load time, so on
 * older kernels the verifier never walks the call and accepts the program. */
const volatile bool tw_skb_netns_cookie = true;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* userspace sets the size before load */
} tw_ident_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_ident_counters);
} tw_ident_counters SEC(".maps");

/* Sockets' announcement modes (struct tw_sk_info.mode). */
enum {
	TW_MODE_NONE = 0, /* not announced */
	TW_MODE_STREAM = 1, /* TCP: announced once for the socket's life */
	TW_MODE_UDP_CONNECTED = 2, /* announced for the peer in peer/peer_port */
	TW_MODE_UDP_UNCONNECTED = 3, /* announced for the local addresses in local[] */
};

struct tw_local_addr {
	__u8 ip_version; /* 0: empty slot */
	__u8 reserved[3];
	__u8 addr[16];
};

/* Per-socket state, in the socket's local storage. */
struct tw_sk_info {
	/* The creator (tgid, pid, comm, cgroup, netns, cookie) and the tuple
	 * last announced; ts_ns and type are filled per event. */
	struct tw_sock_event ev;
	/* Cookie of the socket this entry was filled for. A connection accepted
	 * from a listener starts with a copy of the listener's entry
	 * (BPF_F_CLONE), so there it is the listener's cookie. 0 while a
	 * packet program is still filling an entry it created. */
	__u64 own_cookie;
	__u64 announced; /* own_cookie once announced in the current mode; 0 before */
	__u32 peer[4]; /* TW_MODE_UDP_CONNECTED: the socket's peer address (socket fields) */
	__u16 peer_port; /* network order, as struct bpf_sock.dst_port */
	__u8 creator_flags; /* TW_SOCK_F_NO_CREATOR, TW_SOCK_F_ACCEPTED */
	__u8 mode;
	__u8 family; /* the socket's address family */
	__u8 released; /* sock_release ran: nothing is announced any more */
	__u8 next_slot;
	__u8 reserved;
	struct tw_local_addr local[TW_UDP_LOCAL_SLOTS];
};

/* BPF_F_CLONE: an accepted socket inherits its listener's entry, hence the
 * listener's creator. BPF_F_NO_PREALLOC is mandatory for socket storage. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct tw_sk_info);
} tw_sk_info SEC(".maps");

/* Wire headers, read from the packet with bpf_skb_load_bytes. Declared here
 * rather than taken from vmlinux.h, whose types carry CO-RE relocations that
 * make no sense on a copy of packet bytes. */
struct tw_ip4_hdr {
	__u8 ver_ihl;
	__u8 tos;
	__u16 tot_len;
	__u16 id;
	__u16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__u8 saddr[4];
	__u8 daddr[4];
};

struct tw_ip6_hdr {
	__u32 ver_tc_flow;
	__u16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct tw_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* host order */
	__u16 dport;
	__u8 ip_version;
};

static __always_inline struct tw_ident_counters *counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&tw_ident_counters, &zero);
}

static __always_inline void count_drop(enum tw_ident_drop_reason r)
{
	struct tw_ident_counters *c = counters();

	if (c)
		c->drop[r]++;
}

static __always_inline void count_emitted(__u32 type)
{
	struct tw_ident_counters *c = counters();

	if (c && type < TW_IDENT_TYPE_SLOTS)
		c->emitted[type]++;
}

/* Batched notifications: wake the consumer only once enough is queued; its
 * timer drains the rest. */
static __always_inline __u64 wake_flags(void)
{
	return bpf_ringbuf_query(&tw_ident_ring, BPF_RB_AVAIL_DATA) >= tw_ident_wakeup_bytes ? BPF_RB_FORCE_WAKEUP
											     : BPF_RB_NO_WAKEUP;
}

/* The sockets identified: TCP and UDP over IPv4 and IPv6. Raw sockets (the
 * kernel's TCP control socket that sends resets included), ICMP, SCTP and
 * MPTCP's user-facing socket are not. */
static __always_inline __u8 tracked_l4(__u32 family, __u32 type, __u32 protocol)
{
	if (family != TW_AF_INET && family != TW_AF_INET6)
		return 0;
	if (type == TW_SOCK_STREAM && protocol == IPPROTO_TCP)
		return IPPROTO_TCP;
	if (type == TW_SOCK_DGRAM && protocol == IPPROTO_UDP)
		return IPPROTO_UDP;
	return 0;
}

/* ---- socket creation ------------------------------------------------------ */

SEC("cgroup/sock_create")
int tw_sock_create(struct bpf_sock *ctx)
{
	struct tw_sk_info *st;
	__u64 id;
	__u8 l4 = tracked_l4(ctx->family, ctx->type, ctx->protocol);

	if (!l4)
		return 1;
	st = bpf_sk_storage_get(&tw_sk_info, ctx, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		count_drop(TW_IDENT_DROP_NO_STORAGE);
		return 1;
	}
	/* A new socket: no packet program can see this entry yet. */
	id = bpf_get_current_pid_tgid();
	st->ev.tgid = id >> 32;
	st->ev.pid = (__u32)id;
	bpf_get_current_comm(st->ev.comm, sizeof(st->ev.comm));
	st->ev.cgroup_id = bpf_get_current_cgroup_id();
	st->ev.netns_cookie = bpf_get_netns_cookie(ctx);
	st->ev.l4_proto = l4;
	st->family = ctx->family;
	st->ev.cookie = bpf_get_socket_cookie(ctx);
	st->own_cookie = st->ev.cookie;
	return 1;
}

/* ---- packets -------------------------------------------------------------- */

/* The IP header and the ports, for sockets of protocol l4. cgroup_skb
 * programs see the packet from its network header on. */
static __always_inline int parse_tuple(struct __sk_buff *skb, __u8 l4, struct tw_tuple *t)
{
	__u32 l4off;
	__u8 proto;
	__u16 ports[2];

	if (skb->protocol == bpf_htons(TW_ETH_P_IP)) {
		struct tw_ip4_hdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0)
			return -1;
		if ((ip.ver_ihl >> 4) != 4 || (ip.ver_ihl & 0xf) < 5)
			return -1;
		/* Egress runs before fragmentation and ingress after
		 * reassembly, so a later fragment is a malformed packet. */
		if (ip.frag_off & bpf_htons(0x1fff))
			return -1;
		proto = ip.protocol;
		l4off = (ip.ver_ihl & 0xf) * 4;
		t->ip_version = 4;
		__builtin_memcpy(t->saddr, ip.saddr, 4);
		__builtin_memcpy(t->daddr, ip.daddr, 4);
	} else if (skb->protocol == bpf_htons(TW_ETH_P_IPV6)) {
		struct tw_ip6_hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0)
			return -1;
		if ((bpf_ntohl(ip6.ver_tc_flow) >> 28) != 6)
			return -1;
		proto = ip6.nexthdr;
		l4off = sizeof(ip6);
		t->ip_version = 6;
		__builtin_memcpy(t->saddr, ip6.saddr, 16);
		__builtin_memcpy(t->daddr, ip6.daddr, 16);
		for (int i = 0; i < TW_MAX_IPV6_EXT; i++) { /* bounded: the verifier walks it */
			__u8 ext[2];

			if (proto != TW_IP6_NEXTHDR_HOP && proto != TW_IP6_NEXTHDR_ROUTING &&
			    proto != TW_IP6_NEXTHDR_DEST && proto != TW_IP6_NEXTHDR_FRAGMENT)
				break;
			if (bpf_skb_load_bytes(skb, l4off, ext, sizeof(ext)) < 0)
				return -1;
			if (proto == TW_IP6_NEXTHDR_FRAGMENT) {
				__u16 fo;

				if (bpf_skb_load_bytes(skb, l4off + 2, &fo, sizeof(fo)) < 0)
					return -1;
				if (fo & bpf_htons(0xfff8))
					return -1;
				l4off += 8;
			} else {
				l4off += (ext[1] + 1) * 8;
			}
			proto = ext[0];
		}
	} else {
		return -1;
	}
	if (proto != l4)
		return -1;
	/* TCP and UDP both start with the two ports. */
	if (bpf_skb_load_bytes(skb, l4off, ports, sizeof(ports)) < 0)
		return -1;
	t->sport = bpf_ntohs(ports[0]);
	t->dport = bpf_ntohs(ports[1]);
	return 0;
}

/* The network namespace of a socket older than the hooks (no sock_create
 * saw it). Without the skb helper: through the socket's BTF type, which the
 * skc_to_* helpers give for TCP and IPv6 UDP sockets; IPv4 UDP then reads 0
 * (unknown). */
static __always_inline __u64 netns_cookie_of(struct __sk_buff *skb, struct bpf_sock *fsk)
{
	struct tcp_sock *tp;
	struct udp6_sock *u6;

	if (tw_skb_netns_cookie)
		return bpf_get_netns_cookie(skb);
	tp = bpf_skc_to_tcp_sock(fsk);
	if (tp)
		return tp->inet_conn.icsk_inet.sk.__sk_common.skc_net.net->net_cookie;
	u6 = bpf_skc_to_udp6_sock(fsk);
	if (u6)
		return u6->udp.inet.sk.__sk_common.skc_net.net->net_cookie;
	return 0;
}

static __always_inline int same_local(const struct tw_local_addr *s, __u8 ver, const __u8 *addr)
{
	if (s->ip_version != ver)
		return 0;
	if (ver == 4)
		return *(const __u32 *)s->addr == *(const __u32 *)addr;
	return *(const __u64 *)s->addr == *(const __u64 *)addr &&
	       *(const __u64 *)(s->addr + 8) == *(const __u64 *)(addr + 8);
}

static __always_inline int local_seen(const struct tw_sk_info *st, __u8 ver, const __u8 *addr)
{
#pragma unroll
	for (int i = 0; i < TW_UDP_LOCAL_SLOTS; i++)
		if (same_local(&st->local[i], ver, addr))
			return 1;
	return 0;
}

/* Unconnected UDP, fast path: was the local address of this packet (the
 * source on egress, the destination on ingress) announced already? Reads
 * just that address from the packet. */
static __always_inline int udp_local_announced(struct __sk_buff *skb, const struct tw_sk_info *st, int egress)
{
	__u8 addr[16];

	if (skb->protocol == bpf_htons(TW_ETH_P_IP)) {
		if (bpf_skb_load_bytes(skb, egress ? 12 : 16, addr, 4) < 0)
			return 0;
		return local_seen(st, 4, addr);
	}
	if (bpf_skb_load_bytes(skb, egress ? 8 : 24, addr, 16) < 0)
		return 0;
	return local_seen(st, 6, addr);
}

/* verifier workaround: the verifier accepts socket fields only as loads at a
 * constant offset from the socket pointer, but clang turns elements of
 * struct bpf_sock's arrays (dst_ip6[i]) into "pointer + offset" arithmetic
 * first (and, through vmlinux.h, a CO-RE relocated offset), which it refuses
 * on socket pointers. So these four loads are written in assembly, at the
 * stable uapi offsets. */
#define TW_BPF_SOCK_DST_IP6 56
_Static_assert(__builtin_offsetof(struct bpf_sock, dst_ip6) == TW_BPF_SOCK_DST_IP6, "struct bpf_sock layout");
#define TW_SK_LOAD32(sk, off)                                                                        \
	({                                                                                           \
		__u32 __v;                                                                           \
		asm volatile("%[v] = *(u32 *)(%[p] + %[o])" : [v] "=r"(__v) : [p] "r"(sk), [o] "i"(off)); \
		__v;                                                                                 \
	})

static __always_inline void read_peer(struct bpf_sock *sk, __u8 family, __u32 peer[4])
{
	if (family == TW_AF_INET6) {
		peer[0] = TW_SK_LOAD32(sk, TW_BPF_SOCK_DST_IP6);
		peer[1] = TW_SK_LOAD32(sk, TW_BPF_SOCK_DST_IP6 + 4);
		peer[2] = TW_SK_LOAD32(sk, TW_BPF_SOCK_DST_IP6 + 8);
		peer[3] = TW_SK_LOAD32(sk, TW_BPF_SOCK_DST_IP6 + 12);
	} else {
		peer[0] = sk->dst_ip4;
		peer[1] = peer[2] = peer[3] = 0;
	}
}

static __always_inline int same_peer(struct bpf_sock *sk, const struct tw_sk_info *st)
{
	__u32 peer[4];

	if (sk->dst_port != st->peer_port)
		return 0;
	read_peer(sk, st->family, peer);
	return peer[0] == st->peer[0] && peer[1] == st->peer[1] && peer[2] == st->peer[2] && peer[3] == st->peer[3];
}

/* The slow path: the socket's first packet, or a packet that may need a new
 * announcement. Anything here may cost more; it runs once per socket (and
 * per local address or peer for UDP). */
static __always_inline void announce(struct __sk_buff *skb, struct bpf_sock *sk, struct tw_sk_info *st, int egress)
{
	struct bpf_sock *fsk;
	struct tw_sock_event *e;
	struct tw_tuple t = {};
	__u64 cookie;
	__u8 l4, mode;

	/* Request and timewait sockets are no process's: their packets count
	 * for the listener, or for a socket closed already. */
	fsk = bpf_sk_fullsock(sk);
	if (!fsk)
		return;
	l4 = tracked_l4(fsk->family, fsk->type, fsk->protocol);
	if (!l4)
		return;
	/* A listener is never announced (its children are); no entry is
	 * created for one either, so that children of a listener older than
	 * the hooks are announced with TW_SOCK_F_NO_CREATOR. */
	if (l4 == IPPROTO_TCP && fsk->state == BPF_TCP_LISTEN)
		return;
	cookie = bpf_get_socket_cookie(skb);

	if (!st) {
		/* Created before the hooks were attached (or by the kernel). */
		st = bpf_sk_storage_get(&tw_sk_info, fsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st) {
			count_drop(TW_IDENT_DROP_NO_STORAGE);
			return;
		}
	}
	if (st->own_cookie == 0) {
		/* An entry this path created (here or on another CPU, which
		 * writes the same values): fill it as a socket of unknown
		 * creator. */
		st->ev.cgroup_id = bpf_sk_cgroup_id(fsk);
		st->ev.netns_cookie = netns_cookie_of(skb, fsk);
		st->ev.l4_proto = l4;
		st->ev.cookie = cookie;
		st->family = fsk->family;
		st->creator_flags = TW_SOCK_F_NO_CREATOR;
		st->own_cookie = cookie;
	} else if (st->own_cookie != cookie) {
		/* First packet of an accepted connection: the entry is a copy
		 * of the listener's; the creator stays, the rest is this
		 * socket's own. */
		st->own_cookie = cookie;
		st->ev.cookie = cookie;
		st->creator_flags |= TW_SOCK_F_ACCEPTED;
		st->released = 0; /* the listener's state, not this socket's */
		st->announced = 0;
		st->mode = TW_MODE_NONE;
		__builtin_memset(st->local, 0, sizeof(st->local));
		st->next_slot = 0;
	}

	if (st->released)
		return;
	if (parse_tuple(skb, l4, &t) < 0) {
		count_drop(TW_IDENT_DROP_BAD_HEADER);
		return;
	}
	if (l4 == IPPROTO_TCP)
		mode = TW_MODE_STREAM;
	else if (sk->dst_port != 0)
		mode = TW_MODE_UDP_CONNECTED;
	else
		mode = TW_MODE_UDP_UNCONNECTED;

	/* Checked again here: this path also runs for packets the fast path
	 * could not judge (an unconnected UDP packet whose address could not
	 * be read there). */
	if (st->announced == cookie && st->mode == mode) {
		if (mode == TW_MODE_STREAM)
			return;
		if (mode == TW_MODE_UDP_CONNECTED && same_peer(sk, st))
			return;
		if (mode == TW_MODE_UDP_UNCONNECTED && local_seen(st, t.ip_version, egress ? t.saddr : t.daddr))
			return;
	}

	e = bpf_ringbuf_reserve(&tw_ident_ring, sizeof(*e), 0);
	if (!e) {
		/* not marked announced: the next packet tries again */
		count_drop(TW_IDENT_DROP_RINGBUF_FULL);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->cookie = cookie;
	e->cgroup_id = st->ev.cgroup_id;
	e->netns_cookie = st->ev.netns_cookie;
	e->tgid = st->ev.tgid;
	e->pid = st->ev.pid;
	e->type = TW_IDENT_SOCK_OPEN;
	e->l4_proto = l4;
	e->ip_version = t.ip_version;
	e->flags = st->creator_flags | (mode == TW_MODE_UDP_UNCONNECTED ? TW_SOCK_F_UNCONNECTED : 0);
	__builtin_memcpy(e->comm, st->ev.comm, sizeof(e->comm));
	/* The tuple as the socket sees it: local is the source of what it
	 * sends and the destination of what it receives. */
	if (egress) {
		__builtin_memcpy(e->laddr, t.saddr, 16);
		__builtin_memcpy(e->raddr, t.daddr, 16);
		e->lport = t.sport;
		e->rport = t.dport;
	} else {
		__builtin_memcpy(e->laddr, t.daddr, 16);
		__builtin_memcpy(e->raddr, t.saddr, 16);
		e->lport = t.dport;
		e->rport = t.sport;
	}
	if (mode == TW_MODE_UDP_UNCONNECTED) {
		__builtin_memset(e->raddr, 0, 16);
		e->rport = 0;
	}

	/* Remember what was announced (sock_release repeats it). */
	st->ev.ip_version = e->ip_version;
	st->ev.flags = e->flags;
	st->ev.lport = e->lport;
	st->ev.rport = e->rport;
	__builtin_memcpy(st->ev.laddr, e->laddr, 16);
	__builtin_memcpy(st->ev.raddr, e->raddr, 16);
	if (mode != st->mode) {
		__builtin_memset(st->local, 0, sizeof(st->local));
		st->next_slot = 0;
	}
	if (mode == TW_MODE_UDP_CONNECTED) {
		read_peer(sk, st->family, st->peer);
		st->peer_port = sk->dst_port;
	} else if (mode == TW_MODE_UDP_UNCONNECTED) {
		__u32 slot = st->next_slot % TW_UDP_LOCAL_SLOTS;
		struct tw_local_addr *s = &st->local[slot];

		s->ip_version = t.ip_version;
		__builtin_memcpy(s->addr, e->laddr, 16);
		st->next_slot = (slot + 1) % TW_UDP_LOCAL_SLOTS;
	}
	st->mode = mode;
	st->announced = cookie;
	bpf_ringbuf_submit(e, wake_flags());
	count_emitted(TW_IDENT_SOCK_OPEN);
}

/* Per packet: one socket-storage lookup and one compare (plus, for UDP, the
 * peer or the local address) decide that there is nothing to do. */
static __always_inline int on_packet(struct __sk_buff *skb, int egress)
{
	struct bpf_sock *sk = skb->sk;
	struct tw_sk_info *st;

	if (!sk)
		return 1;
	st = bpf_sk_storage_get(&tw_sk_info, sk, 0, 0);
	if (st && st->announced == bpf_get_socket_cookie(skb)) {
		if (st->mode == TW_MODE_STREAM)
			return 1;
		if (st->mode == TW_MODE_UDP_CONNECTED) {
			if (same_peer(sk, st))
				return 1;
		} else if (sk->dst_port == 0 && udp_local_announced(skb, st, egress)) {
			return 1;
		}
	}
	announce(skb, sk, st, egress);
	return 1;
}

SEC("cgroup_skb/ingress")
int tw_ident_ingress(struct __sk_buff *skb)
{
	on_packet(skb, 0);
	return 1; /* always let the packet pass */
}

SEC("cgroup_skb/egress")
int tw_ident_egress(struct __sk_buff *skb)
{
	on_packet(skb, 1);
	return 1; /* always let the packet pass */
}

/* ---- socket release ------------------------------------------------------- */

SEC("cgroup/sock_release")
int tw_sock_release(struct bpf_sock *ctx)
{
	struct tw_sk_info *st = bpf_sk_storage_get(&tw_sk_info, ctx, 0, 0);
	struct tw_sock_event *e;
	__u64 cookie;

	if (!st)
		return 1;
	cookie = bpf_get_socket_cookie(ctx);
	if (st->own_cookie != cookie && st->own_cookie != 0) {
		/* An accepted socket that never carried a packet still holds a
		 * copy of its listener's entry: make it this socket's, released,
		 * so that a late packet (the peer's FIN) does not announce it.
		 * Nothing was announced: no event. */
		st->own_cookie = cookie;
		st->ev.cookie = cookie;
		st->creator_flags |= TW_SOCK_F_ACCEPTED;
		st->announced = 0;
		st->mode = TW_MODE_NONE;
		st->released = 1;
		return 1;
	}
	if (st->released)
		return 1;
	/* Packets may still follow (FIN, retransmissions) but are no news. */
	st->released = 1;
	if (st->announced != cookie)
		return 1;
	e = bpf_ringbuf_reserve(&tw_ident_ring, sizeof(*e), 0);
	if (!e) {
		count_drop(TW_IDENT_DROP_RINGBUF_FULL);
		return 1;
	}
	__builtin_memcpy(e, &st->ev, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->cookie = cookie;
	e->type = TW_IDENT_SOCK_CLOSE;
	bpf_ringbuf_submit(e, wake_flags());
	count_emitted(TW_IDENT_SOCK_CLOSE);
	return 1;
}

/* ---- processes ------------------------------------------------------------ */

static __always_inline struct tw_exec_event *process_event(struct task_struct *p, __u8 type)
{
	struct tw_exec_event *e = bpf_ringbuf_reserve(&tw_ident_ring, sizeof(*e), 0);

	if (!e) {
		count_drop(TW_IDENT_DROP_RINGBUF_FULL);
		return 0;
	}
	/* Ring memory is not zeroed: clear what is not written below. */
	__builtin_memset(e, 0, offsetof(struct tw_exec_event, filename));
	e->filename[0] = 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->tgid = BPF_CORE_READ(p, tgid);
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->type = type;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

/* sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm),
 * after the new image is in place: comm is the new program's. */
SEC("raw_tp/sched_process_exec")
int tw_process_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *p = (struct task_struct *)ctx->args[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	struct tw_exec_event *e = process_event(p, TW_IDENT_EXEC);
	const char *filename;
	long n;

	if (!e)
		return 0;
	filename = BPF_CORE_READ(bprm, filename);
	n = bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), filename);
	/* n counts the NUL; a longer path is cut at TW_EXEC_FILENAME_MAX - 1 */
	e->filename_len = n > 1 ? (__u32)n - 1 : 0;
	bpf_ringbuf_submit(e, wake_flags());
	count_emitted(TW_IDENT_EXEC);
	return 0;
}

/* sched_process_exit(struct task_struct *p[, bool group_dead]) runs for every
 * exiting thread: report the thread group once, when its last thread goes. */
SEC("raw_tp/sched_process_exit")
int tw_process_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *p = (struct task_struct *)ctx->args[0];
	struct tw_exec_event *e;
	int group_dead;

	/* Kernels from 6.16 on pass group_dead (their tracepoint has its own
	 * event layout, which is how it is told apart). Before, do_exit() has
	 * already counted the thread out of signal->live when the tracepoint
	 * fires, so 0 there means the same (two last threads exiting at once
	 * may both see 0: a rare duplicate). */
	if (bpf_core_field_exists(struct trace_event_raw_sched_process_exit, group_dead))
		group_dead = (__u8)ctx->args[1];
	else
		group_dead = BPF_CORE_READ(p, signal, live.counter) == 0;
	if (!group_dead)
		return 0;
	e = process_event(p, TW_IDENT_EXIT);
	if (!e)
		return 0;
	bpf_ringbuf_submit(e, wake_flags());
	count_emitted(TW_IDENT_EXIT);
	return 0;
}
