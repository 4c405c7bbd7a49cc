/* Packet parsing for tc programs: Ethernet → IPv4 (options) / IPv6 (extension headers) → TCP/UDP.
 *
 * The parser must reach the ports of every packet the kernel would hand to TCP or UDP, or the
 * packet slips past the redirect rules: an IPv4 header with options (IHL > 5) and an IPv6
 * chain of Hop-by-Hop, Routing, Fragment, Destination Options or AH headers are walked (as
 * Cilium's ipv6_hdrlen does, bounded), fragments are told apart (only the first carries the
 * ports), and whatever cannot be walked is reported as such so the program can drop it
 * instead of passing it. Headers past the fixed IPv4/IPv6 one are read with
 * bpf_skb_load_bytes: their offsets are variable, and a read past the end fails cleanly. */
#ifndef LOUPE_LIB_PARSE_H
#define LOUPE_LIB_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* IPv6 extension headers the kernel skips on its way to TCP/UDP (include/net/ipv6.h). */
#define LOUPE_NEXTHDR_HOP       0
#define LOUPE_NEXTHDR_ROUTING   43
#define LOUPE_NEXTHDR_FRAGMENT  44
#define LOUPE_NEXTHDR_AUTH      51
#define LOUPE_NEXTHDR_DEST      60
/* Longest extension-header chain walked (Cilium's IPV6_MAX_HEADERS is 4; a pod may stack more,
 * and a longer chain is dropped rather than passed, so the bound is generous). */
#define LOUPE_IPV6_MAX_EXT      8

#define LOUPE_IP_MF             0x2000
#define LOUPE_IP_OFFSET         0x1fff
#define LOUPE_IP6_MF            0x0001
#define LOUPE_IP6_OFFSET        0xfff8

enum loupe_parse_result {
    LOUPE_PARSE_L4 = 0,         /* TCP or UDP, ports read: *p is filled */
    LOUPE_PARSE_NOT_L4,         /* not IP, or IP that carries neither TCP nor UDP (ICMP, ESP, …) */
    LOUPE_PARSE_LATER_FRAGMENT, /* a non-first fragment: no L4 header (its first fragment has it) */
    LOUPE_PARSE_UNPARSEABLE,    /* IP whose headers cannot be walked to the ports: truncated, IHL < 5,
                                 * a chain longer than LOUPE_IPV6_MAX_EXT, a first fragment too short
                                 * for its L4 header (RFC 1858's tiny fragment) */
};

struct loupe_packet {
    __u8  family;            /* 4 or 6, 0 when not IP */
    __u8  proto;
    __u8  syn;               /* SYN set, ACK clear */
    __u8  first_fragment;    /* the first fragment of a fragmented datagram (ports read) */
    __u8  saddr[16];
    __u8  daddr[16];
    __u16 sport;             /* host byte order */
    __u16 dport;
    struct bpf_sock_tuple tuple;  /* network byte order, for socket lookups */
};

/* Walks the IPv6 extension-header chain from `*off` (just past the fixed header). Returns
 * LOUPE_PARSE_L4 with *proto and *off at the TCP/UDP header, or another result. */
static __always_inline int loupe_ipv6_walk(struct __sk_buff *skb, __u8 nexthdr, __u32 *off,
                                           __u8 *proto, __u8 *first_fragment)
{
#pragma unroll
    for (int i = 0; i < LOUPE_IPV6_MAX_EXT; i++) {
        __u8 h[4];

        switch (nexthdr) {
        case IPPROTO_TCP:
        case IPPROTO_UDP:
            *proto = nexthdr;
            return LOUPE_PARSE_L4;
        case LOUPE_NEXTHDR_HOP:
        case LOUPE_NEXTHDR_ROUTING:
        case LOUPE_NEXTHDR_DEST:
            /* next header, length in 8-octet units not counting the first */
            if (bpf_skb_load_bytes(skb, *off, h, 2) < 0)
                return LOUPE_PARSE_UNPARSEABLE;
            nexthdr = h[0];
            *off += ((__u32)h[1] + 1) * 8;
            break;
        case LOUPE_NEXTHDR_AUTH:
            /* RFC 4302: length in 4-octet units minus 2 */
            if (bpf_skb_load_bytes(skb, *off, h, 2) < 0)
                return LOUPE_PARSE_UNPARSEABLE;
            nexthdr = h[0];
            *off += ((__u32)h[1] + 2) * 4;
            break;
        case LOUPE_NEXTHDR_FRAGMENT: {
            __u16 frag;
            if (bpf_skb_load_bytes(skb, *off, h, 4) < 0)
                return LOUPE_PARSE_UNPARSEABLE;
            frag = ((__u16)h[2] << 8) | h[3];
            if (frag & LOUPE_IP6_OFFSET)
                return LOUPE_PARSE_LATER_FRAGMENT;
            if (frag & LOUPE_IP6_MF)
                *first_fragment = 1;
            nexthdr = h[0];
            *off += 8;
            break;
        }
        default:
            return LOUPE_PARSE_NOT_L4;
        }
    }
    if (nexthdr == IPPROTO_TCP || nexthdr == IPPROTO_UDP) {
        *proto = nexthdr;
        return LOUPE_PARSE_L4;
    }
    return LOUPE_PARSE_UNPARSEABLE;
}

/* Reads the ports (and TCP's SYN) at `off`. A header cut short is unparseable. */
static __always_inline int loupe_parse_ports(struct __sk_buff *skb, __u32 off, struct loupe_packet *p)
{
    if (p->proto == IPPROTO_TCP) {
        struct tcphdr tcp;
        if (bpf_skb_load_bytes(skb, off, &tcp, sizeof(tcp)) < 0)
            return LOUPE_PARSE_UNPARSEABLE;
        p->sport = bpf_ntohs(tcp.source);
        p->dport = bpf_ntohs(tcp.dest);
        p->syn = tcp.syn && !tcp.ack;
    } else {
        struct udphdr udp;
        if (bpf_skb_load_bytes(skb, off, &udp, sizeof(udp)) < 0)
            return LOUPE_PARSE_UNPARSEABLE;
        p->sport = bpf_ntohs(udp.source);
        p->dport = bpf_ntohs(udp.dest);
        p->syn = 0;
    }
    return LOUPE_PARSE_L4;
}

/* Classifies the packet (enum loupe_parse_result); on LOUPE_PARSE_L4 fills *p. */
static __always_inline int loupe_parse_l4(struct __sk_buff *skb, struct loupe_packet *p)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    __u32 off;
    int rc;

    if ((void *)(eth + 1) > end)
        return LOUPE_PARSE_NOT_L4;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        __u16 frag;
        if ((void *)(ip + 1) > end)
            return LOUPE_PARSE_UNPARSEABLE;
        if (ip->version != 4 || ip->ihl < 5)
            return LOUPE_PARSE_UNPARSEABLE;
        if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
            return LOUPE_PARSE_NOT_L4;
        frag = bpf_ntohs(ip->frag_off);
        if (frag & LOUPE_IP_OFFSET)
            return LOUPE_PARSE_LATER_FRAGMENT;
        p->first_fragment = (frag & LOUPE_IP_MF) ? 1 : 0;
        p->proto = ip->protocol;
        p->family = 4;
        off = sizeof(struct ethhdr) + (__u32)ip->ihl * 4; /* options included */
        __builtin_memcpy(p->saddr, &ip->saddr, 4);
        __builtin_memcpy(p->daddr, &ip->daddr, 4);
        p->tuple.ipv4.saddr = ip->saddr;
        p->tuple.ipv4.daddr = ip->daddr;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return LOUPE_PARSE_UNPARSEABLE;
        p->family = 6;
        __builtin_memcpy(p->saddr, &ip6->saddr, 16);
        __builtin_memcpy(p->daddr, &ip6->daddr, 16);
        __builtin_memcpy(p->tuple.ipv6.saddr, &ip6->saddr, 16);
        __builtin_memcpy(p->tuple.ipv6.daddr, &ip6->daddr, 16);
        off = sizeof(struct ethhdr) + sizeof(struct ipv6hdr);
        rc = loupe_ipv6_walk(skb, ip6->nexthdr, &off, &p->proto, &p->first_fragment);
        if (rc != LOUPE_PARSE_L4)
            return rc;
    } else {
        return LOUPE_PARSE_NOT_L4;
    }
    rc = loupe_parse_ports(skb, off, p);
    if (rc != LOUPE_PARSE_L4)
        return rc;
    if (p->family == 4) {
        p->tuple.ipv4.sport = bpf_htons(p->sport);
        p->tuple.ipv4.dport = bpf_htons(p->dport);
    } else {
        p->tuple.ipv6.sport = bpf_htons(p->sport);
        p->tuple.ipv6.dport = bpf_htons(p->dport);
    }
    return LOUPE_PARSE_L4;
}

#endif
