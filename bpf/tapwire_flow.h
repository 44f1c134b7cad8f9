/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Flow accounting, shared by the capture program (bpf/capture.bpf.c, in the
 * kernel, holding the flow entry's lock) and userspace (flows from a pcap, unit
 * tests): the flow table's key and value, and the per-packet update.
 *
 * The TCP analysis is Wireshark 4.0's (epan/dissectors/packet-tcp.c,
 * tcp_analyze_sequence_number() and the conversation handling around it, with
 * the default preferences: analyse sequence numbers, fast retransmission
 * before out-of-order), packet by packet in capture order, so that the
 * counts equal tshark's tcp.analysis.* on a capture of the same interface.
 * It keeps no per-segment list: what Wireshark derives from one (RTO, bytes
 * in flight) is not counted here.
 *
 * Pure arithmetic on the value: no helper calls (the kernel runs it holding
 * the entry's lock), no loops, fixed-width types only.
 */
#ifndef TAPWIRE_FLOW_H
#define TAPWIRE_FLOW_H

#include <linux/types.h>

#ifdef __BPF__
#define TW_FLOW_INLINE static __always_inline
#else
#define TW_FLOW_INLINE static inline
#endif

/* The flow table's key: both ends in a canonical order, side a the smaller
 * (address, then port), so that both directions find one entry. Addresses as
 * on the wire (IPv4 in the first 4 bytes, the rest zero), ports host order. */
struct tw_flow_key {
	__u8 ip_version; /* 4 or 6 */
	__u8 l4_proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u16 port_a;
	__u16 port_b;
	__u16 pad; /* 0 */
	__u8 addr_a[16];
	__u8 addr_b[16];
};

/* The side that sent a packet: 0 = a, 1 = b. */
#define TW_SIDE_A 0u
#define TW_SIDE_B 1u

/* tw_flow_dir.ta_last: Wireshark's "lastsegmentflags" bits that matter */
#define TW_TA_KEEP_ALIVE 0x1u
#define TW_TA_ZERO_WINDOW_PROBE 0x2u

/* tw_flow_dir.seen */
#define TW_FD_BASE_SEQ_SET 0x1u

/* What one direction (one side's packets) counted, and Wireshark's
 * per-direction analysis state (tcp_analyze_seq_flow_info_t). */
struct tw_flow_dir {
	__u64 packets;
	__u64 bytes; /* frame bytes at the capture point (skb->len at TC: link-layer header included) */
	__u64 payload_bytes; /* L4 payload */
	__u64 nextseq_ns; /* when nextseq was last advanced */
	__u64 lastack_ns; /* when lastack was last stored (any packet of this side) */
	__u32 nextseq; /* 0: unknown, as in Wireshark */
	__u32 lastack;
	__u32 maxseqtobeacked;
	__u32 window; /* raw window of the side's last packet; 0xffffffff before any */
	__u32 dupacknum; /* unsigned as in Wireshark: its -1 ("ack of an unseen segment") is 0xffffffff, which counts as >= 2 */
	__u32 base_seq;
	/* tcp.analysis.* counts, per packet of this side */
	__u32 retransmissions; /* plain (TCP_A_RETRANSMISSION) only: see tw_flow_retransmissions() */
	__u32 fast_retransmissions;
	__u32 spurious_retransmissions;
	__u32 out_of_order;
	__u32 lost_segments; /* tcp.analysis.lost_segment: a hole before this packet */
	__u32 acked_unseen; /* tcp.analysis.ack_lost_segment */
	__u32 dup_acks;
	__u32 zero_windows;
	__u32 zero_window_probes;
	__u32 keep_alives;
	__u32 window_updates;
	__u32 resets; /* packets with RST */
	__u32 fins; /* packets with FIN */
	__u8 tcp_flags; /* every TCP flag this side sent, ORed */
	__u8 ta_last; /* TW_TA_* of this side's last packet */
	__u8 seen; /* TW_FD_* */
	__u8 pad[5];
};

/* tw_flow_state.bits */
#define TW_FLOW_B_CLIENT_B 0x01u /* the client is side b (else side a) */
#define TW_FLOW_B_MID_STREAM 0x02u /* the first packet was not a SYN */
#define TW_FLOW_B_SYNACK 0x04u /* a SYN-ACK was seen */
#define TW_FLOW_B_ESTABLISHED 0x08u /* the client ACKed after a SYN-ACK (or data flowed both ways) */
#define TW_FLOW_B_REFUSED 0x10u /* the server answered the client's SYN with RST, before any SYN-ACK */
#define TW_FLOW_B_REUSED 0x20u /* a SYN on the same 4-tuple with a new ISN ended the previous flow */

/* Wireshark's tcp.completeness bits */
#define TW_COMPLETE_SYN 0x01u
#define TW_COMPLETE_SYNACK 0x02u
#define TW_COMPLETE_ACK 0x04u
#define TW_COMPLETE_DATA 0x08u
#define TW_COMPLETE_FIN 0x10u
#define TW_COMPLETE_RST 0x20u

/* One flow: everything but the lock (the kernel's map value wraps it). */
struct tw_flow_state {
	__u64 first_ns; /* the clock of the packets: CLOCK_MONOTONIC in the kernel */
	__u64 last_ns;
	__u64 mru_syn_ns; /* the most recent SYN (without ACK) */
	__u64 first_rtt_ns; /* handshake RTT, 0 until known */
	__u32 ifindex; /* where the flow's first packet was seen */
	__u8 bits; /* TW_FLOW_B_* */
	__u8 completeness; /* TW_COMPLETE_* */
	__u8 harvest; /* userspace's: records written so far (0, 1, 2+ = 2) */
	__u8 pad;
	struct tw_flow_dir dir[2]; /* by side */
};

/* One packet, as the update needs it. */
struct tw_flow_pkt {
	__u64 ts_ns;
	__u32 wire_len; /* frame bytes at the capture point */
	__u32 payload_len; /* L4 payload bytes (TCP: segment length) */
	__u32 seq, ack; /* TCP, host order */
	__u32 window; /* TCP raw window */
	__u32 ifindex;
	__u16 sport, dport; /* host order */
	__u8 tcp_flags;
	__u8 side; /* TW_SIDE_A or TW_SIDE_B */
	__u8 pad[2];
};

/* Wireshark's sequence comparisons (32-bit wrap) */
#define TW_GT_SEQ(x, y) ((__s32)((y) - (x)) < 0)
#define TW_LT_SEQ(x, y) ((__s32)((x) - (y)) < 0)
#define TW_LE_SEQ(x, y) ((__s32)((x) - (y)) <= 0)

/* Wireshark's tcp.analysis.retransmission: plain, fast and spurious. */
TW_FLOW_INLINE __u32 tw_flow_retransmissions(const struct tw_flow_dir *d)
{
	return d->retransmissions + d->fast_retransmissions + d->spurious_retransmissions;
}

/* The first packet of a flow: which side is the client. TCP: the sender of a
 * pure SYN, the receiver of a SYN-ACK; otherwise (a flow joined late, UDP)
 * the sender, unless only the receiver uses a port below 1024. */
TW_FLOW_INLINE void tw_flow_init(struct tw_flow_state *f, const struct tw_flow_pkt *p, __u8 l4_proto)
{
	__u8 fl = p->tcp_flags;
	int sender_client = 1;

	f->first_ns = p->ts_ns;
	f->last_ns = p->ts_ns;
	f->ifindex = p->ifindex;
	f->dir[0].window = 0xffffffffu;
	f->dir[1].window = 0xffffffffu;
	if (l4_proto == 6 && (fl & 0x12) == 0x02) {
		sender_client = 1;
	} else if (l4_proto == 6 && (fl & 0x12) == 0x12) {
		sender_client = 0;
		f->bits |= TW_FLOW_B_MID_STREAM;
	} else {
		if (l4_proto == 6)
			f->bits |= TW_FLOW_B_MID_STREAM;
		if (p->sport < 1024 && p->dport >= 1024)
			sender_client = 0;
	}
	if ((sender_client && p->side == TW_SIDE_B) || (!sender_client && p->side == TW_SIDE_A))
		f->bits |= TW_FLOW_B_CLIENT_B;
}

/* tw_flow_tcp_update() result */
#define TW_FLOW_UPDATED 0
#define TW_FLOW_REUSE 1 /* a SYN with a new ISN: end this flow, start a new one with this packet */

/* Counts a UDP datagram. */
TW_FLOW_INLINE void tw_flow_udp_update(struct tw_flow_state *f, const struct tw_flow_pkt *p)
{
	struct tw_flow_dir *d = &f->dir[p->side & 1];

	d->packets++;
	d->bytes += p->wire_len;
	d->payload_bytes += p->payload_len;
	if (p->ts_ns > f->last_ns)
		f->last_ns = p->ts_ns;
}

/*
 * Counts a TCP segment and runs Wireshark's analysis on it. is_new: the
 * flow was created by this packet (tw_flow_init just ran). Returns
 * TW_FLOW_REUSE without changing anything when the packet is a SYN whose
 * sequence number is not the ISN this side already used: Wireshark starts a
 * new conversation there ("TCP port numbers reused"); the caller ends the
 * flow, initialises a fresh one and calls again with is_new = 1.
 */
TW_FLOW_INLINE int tw_flow_tcp_update(struct tw_flow_state *f, const struct tw_flow_pkt *p, int is_new)
{
	__u32 side = p->side & 1;
	struct tw_flow_dir *fwd = &f->dir[side];
	struct tw_flow_dir *rev = &f->dir[side ^ 1];
	__u32 seq = p->seq, ack = p->ack, seglen = p->payload_len, window = p->window;
	__u8 flags = p->tcp_flags;
	__u64 now = p->ts_ns;
	__u32 ta = 0; /* this packet's TW_TA_* (Wireshark's tcpd->ta->flags that matter later) */
	int syn = flags & 0x02, ack_f = flags & 0x10, fin = flags & 0x01, rst = flags & 0x04;
	__u32 nextseq;
	__u64 t, ooo_thres;
	int seq_not_advanced;

	/* Conversation lookup: a pure SYN with another ISN is a new conversation;
	 * with the same ISN (a retransmitted SYN), nextseq goes back to what was
	 * acknowledgeable (Wireshark issue 17616). A SYN-ACK with another ISN
	 * moves the base. */
	if (!is_new && syn && !ack_f && (fwd->seen & TW_FD_BASE_SEQ_SET)) {
		if (seq != fwd->base_seq)
			return TW_FLOW_REUSE;
		fwd->nextseq = fwd->maxseqtobeacked;
	}
	if (syn && ack_f && (fwd->seen & TW_FD_BASE_SEQ_SET) && seq != fwd->base_seq)
		fwd->base_seq = seq;

	/* Counting */
	fwd->packets++;
	fwd->bytes += p->wire_len;
	fwd->payload_bytes += seglen;
	fwd->tcp_flags |= flags;
	if (rst)
		fwd->resets++;
	if (fin)
		fwd->fins++;
	if (now > f->last_ns)
		f->last_ns = now;

	/* Base sequence numbers */
	if (!(fwd->seen & TW_FD_BASE_SEQ_SET)) {
		fwd->base_seq = syn ? seq : seq - 1;
		fwd->seen |= TW_FD_BASE_SEQ_SET;
	}
	if (!(rev->seen & TW_FD_BASE_SEQ_SET) && ack_f) {
		rev->base_seq = ack - 1;
		rev->seen |= TW_FD_BASE_SEQ_SET;
	}

	/* ZERO WINDOW PROBE */
	if (seglen == 1 && seq == fwd->nextseq && rev->window == 0) {
		ta |= TW_TA_ZERO_WINDOW_PROBE;
		fwd->zero_window_probes++;
		goto finished_fwd;
	}
	/* ZERO WINDOW */
	if (window == 0 && !(flags & 0x07))
		fwd->zero_windows++;
	/* LOST PACKET: a hole before this segment */
	if (fwd->nextseq && TW_GT_SEQ(seq, fwd->nextseq) && !rst)
		fwd->lost_segments++;
	/* KEEP ALIVE */
	if (seglen <= 1 && seq == fwd->nextseq - 1 && !(flags & 0x07)) {
		ta |= TW_TA_KEEP_ALIVE;
		fwd->keep_alives++;
	}
	/* WINDOW UPDATE */
	if (seglen == 0 && window && window != fwd->window && seq == fwd->nextseq && ack == fwd->lastack &&
	    !(flags & 0x07))
		fwd->window_updates++;
	/* KEEP ALIVE ACK */
	if (seglen == 0 && window && window == fwd->window && seq == fwd->nextseq && ack == fwd->lastack &&
	    (rev->ta_last & TW_TA_KEEP_ALIVE) && !(flags & 0x07))
		goto finished_fwd;
	/* ZERO WINDOW PROBE ACK */
	if (seglen == 0 && window == 0 && window == fwd->window && seq == fwd->nextseq && ack == fwd->lastack &&
	    (rev->ta_last & TW_TA_ZERO_WINDOW_PROBE) && !(flags & 0x07))
		goto finished_fwd;
	/* DUPLICATE ACK */
	if (seglen == 0 && window && window == fwd->window && seq == fwd->nextseq && ack == fwd->lastack &&
	    !(flags & 0x07)) {
		if (fwd->dupacknum == 0xffffffffu)
			fwd->dupacknum = 1;
		else
			fwd->dupacknum++;
		fwd->dup_acks++;
	}

finished_fwd:
	if (ack != fwd->lastack)
		fwd->dupacknum = 0;

	/* ACKED LOST PACKET: this acknowledges beyond what the other side was
	 * seen to send */
	if (rev->maxseqtobeacked && TW_GT_SEQ(ack, rev->maxseqtobeacked) && ack_f) {
		if (TW_LT_SEQ(rev->maxseqtobeacked, rev->nextseq)) {
			rev->maxseqtobeacked = rev->nextseq;
			fwd->acked_unseen++;
		} else {
			if (rev->dupacknum == 0)
				fwd->acked_unseen++;
			rev->dupacknum = 0xffffffffu;
		}
	}

	/* RETRANSMISSION / FAST RETRANSMISSION / OUT-OF-ORDER / SPURIOUS */
	if (seglen > 0 || syn || fin) {
		if (ta & TW_TA_KEEP_ALIVE)
			goto finished_checking_retransmission_type;
		seq_not_advanced = fwd->nextseq && TW_LT_SEQ(seq, fwd->nextseq);
		if (seglen > 1 && fwd->nextseq - 1 == seq)
			seq_not_advanced = 0;
		if (seglen > 0 && rev->lastack && TW_LE_SEQ(seq + seglen, rev->lastack)) {
			fwd->spurious_retransmissions++;
			goto finished_checking_retransmission_type;
		}
		/* fast retransmission first (tcp.fastrt_supersedes_ooo, on by default) */
		t = now - rev->lastack_ns;
		if (seq_not_advanced && rev->dupacknum >= 2 && rev->lastack == seq && t < 20000000ull) {
			fwd->fast_retransmissions++;
			goto finished_checking_retransmission_type;
		}
		t = now - fwd->nextseq_ns;
		ooo_thres = f->first_rtt_ns ? f->first_rtt_ns : 3000000ull;
		if (seq_not_advanced && t < ooo_thres && fwd->nextseq != seq + seglen + ((syn || fin) ? 1 : 0)) {
			fwd->out_of_order++;
			goto finished_checking_retransmission_type;
		}
		if (seq_not_advanced)
			fwd->retransmissions++;
	}

finished_checking_retransmission_type:
	nextseq = seq + seglen;
	if ((seglen || syn || fin))
		nextseq += (syn || fin) ? 1 : 0;
	if (TW_GT_SEQ(nextseq, fwd->nextseq) || !fwd->nextseq) {
		if (!(ta & TW_TA_ZERO_WINDOW_PROBE)) {
			fwd->nextseq = nextseq;
			fwd->nextseq_ns = now;
		}
	}
	if (seq == fwd->maxseqtobeacked || !fwd->maxseqtobeacked) {
		if (!(ta & TW_TA_ZERO_WINDOW_PROBE))
			fwd->maxseqtobeacked = fwd->nextseq;
	}
	fwd->window = window;
	fwd->lastack = ack;
	fwd->lastack_ns = now;
	fwd->ta_last = (__u8)ta;

	/* Completeness (tcp.completeness) */
	if (is_new) {
		if ((flags & 0x12) == 0x02)
			f->completeness |= TW_COMPLETE_SYN | (seglen > 0 ? TW_COMPLETE_DATA : 0);
	} else {
		if ((flags & 0x12) == 0x12)
			f->completeness |= TW_COMPLETE_SYNACK;
		if ((flags & 0x12) == 0x10)
			f->completeness |= seglen > 0 ? TW_COMPLETE_DATA : TW_COMPLETE_ACK;
		if ((flags & 0x11) == 0x11)
			f->completeness |= TW_COMPLETE_FIN;
		if (rst)
			f->completeness |= TW_COMPLETE_RST;
	}

	/* Handshake RTT (tcp.analysis.initial_rtt): the most recent SYN to the
	 * first ACK without SYN */
	if (syn && !ack_f)
		f->mru_syn_ns = now;
	if ((flags & 0x12) == 0x10 && f->mru_syn_ns && !f->first_rtt_ns)
		f->first_rtt_ns = now - f->mru_syn_ns;

	/* State for tapwire's own view (client/server) */
	{
		int from_client = ((f->bits & TW_FLOW_B_CLIENT_B) != 0) == (side == TW_SIDE_B);

		if (syn && ack_f && !from_client)
			f->bits |= TW_FLOW_B_SYNACK;
		if (rst && !from_client && !(f->bits & (TW_FLOW_B_SYNACK | TW_FLOW_B_MID_STREAM | TW_FLOW_B_ESTABLISHED)))
			f->bits |= TW_FLOW_B_REFUSED;
		if (from_client && ack_f && !syn && (f->bits & TW_FLOW_B_SYNACK))
			f->bits |= TW_FLOW_B_ESTABLISHED;
	}
	return TW_FLOW_UPDATED;
}

#endif /* TAPWIRE_FLOW_H */
