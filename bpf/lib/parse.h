/* Packet parsing for tc programs: Ethernet → IPv4/IPv6 → TCP, bounds-checked for the verifier. */
#ifndef LOUPE_LIB_PARSE_H
#define LOUPE_LIB_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct loupe_packet {
    __u8  family;            /* 4 or 6, 0 when not IP */
    __u8  proto;
    __u8  syn;               /* SYN set, ACK clear */
    __u8  saddr[16];
    __u8  daddr[16];
    __u16 sport;             /* host byte order */
    __u16 dport;
    struct bpf_sock_tuple tuple;  /* network byte order, for socket lookups */
};

/* Returns 0 when the packet is TCP or UDP over IPv4/IPv6 and fills *p; -1 otherwise. */
static __always_inline int loupe_parse_l4(struct __sk_buff *skb, struct loupe_packet *p)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    void *l4;
    __u8 proto;

    if ((void *)(eth + 1) > end)
        return -1;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end || ip->ihl < 5)
            return -1;
        if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
            return -1;
        if (ip->frag_off & bpf_htons(0x1fff))
            return -1; /* non-first fragment: no L4 header */
        proto = ip->protocol;
        l4 = (void *)ip + ip->ihl * 4;
        p->family = 4;
        __builtin_memcpy(p->saddr, &ip->saddr, 4);
        __builtin_memcpy(p->daddr, &ip->daddr, 4);
        p->tuple.ipv4.saddr = ip->saddr;
        p->tuple.ipv4.daddr = ip->daddr;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return -1;
        if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
            return -1; /* extension headers are not steered */
        proto = ip6->nexthdr;
        l4 = (void *)(ip6 + 1);
        p->family = 6;
        __builtin_memcpy(p->saddr, &ip6->saddr, 16);
        __builtin_memcpy(p->daddr, &ip6->daddr, 16);
        __builtin_memcpy(p->tuple.ipv6.saddr, &ip6->saddr, 16);
        __builtin_memcpy(p->tuple.ipv6.daddr, &ip6->daddr, 16);
    } else {
        return -1;
    }
    if (proto == IPPROTO_TCP) {
        struct tcphdr *tcp = l4;
        if ((void *)(tcp + 1) > end)
            return -1;
        p->sport = bpf_ntohs(tcp->source);
        p->dport = bpf_ntohs(tcp->dest);
        p->syn = tcp->syn && !tcp->ack;
    } else {
        struct udphdr *udp = l4;
        if ((void *)(udp + 1) > end)
            return -1;
        p->sport = bpf_ntohs(udp->source);
        p->dport = bpf_ntohs(udp->dest);
        p->syn = 0;
    }
    p->proto = proto;
    if (p->family == 4) {
        p->tuple.ipv4.sport = bpf_htons(p->sport);
        p->tuple.ipv4.dport = bpf_htons(p->dport);
    } else {
        p->tuple.ipv6.sport = bpf_htons(p->sport);
        p->tuple.ipv6.dport = bpf_htons(p->dport);
    }
    return 0;
}

#endif
