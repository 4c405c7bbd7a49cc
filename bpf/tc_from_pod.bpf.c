// SPDX-License-Identifier: GPL-2.0
/* tc ingress on a pod's node-side veth: steer selected TCP connections into the Loupe proxy.
 *
 * For each packet from the pod: is the pod managed? does a redirect rule select this
 * destination port and protocol (the pod's Egress rule, or the destination pod's Ingress
 * rule)? If so, hand the packet to the proxy — TCP: the proxy's socket of this connection,
 * or on a SYN its listener; UDP: its transparent datagram socket — with bpf_sk_assign, and
 * mark it so the node routes it locally. With `--upstream-source pod` the same program on
 * every local pod's veth and on the node's uplinks steers the destinations' replies back to
 * the proxy's upstream sockets, which are bound to the client pod's address (see
 * loupe_steer_reply). IP that cannot be parsed to its ports is dropped
 * (it could otherwise reach an enforced port unjudged); everything else passes untouched.
 * Every outcome is counted in loupe_counters.
 *
 * A bridge port (flannel's cni0, the `bridge` plugin) does not assign: it hands the packet to
 * the bridge's receive path, and loupe_from_bridge, on the bridge's tc ingress, assigns it
 * there (see loupe_assign). */
#include "lib/parse.h"
#include "lib/maps.h"

#define TC_ACT_OK   0
#define TC_ACT_SHOT 2

/* Set at load: the proxy listens on this loopback address family-wise (0.0.0.0/[::] listeners
 * are found by a lookup of 127.0.0.1 / ::1). */
const volatile __u32 loupe_listener_v4 = 0x0100007f; /* 127.0.0.1, network order */

static __always_inline struct loupe_redirect_value *loupe_find_rule(struct __sk_buff *skb, struct loupe_packet *p)
{
    struct loupe_redirect_key key = {};
    struct loupe_redirect_value *rule;

    key.ifindex = skb->ifindex;
    key.port = p->dport;
    key.family = p->family;
    key.proto = p->proto;
    rule = bpf_map_lookup_elem(&loupe_redirects, &key);
    if (rule)
        return rule;
    key.ifindex = 0;
    __builtin_memcpy(key.addr, p->daddr, 16);
    return bpf_map_lookup_elem(&loupe_redirects, &key);
}

/* Assigns `sk` to the packet (and releases it); a refusal is counted and drops the packet (the
 * client retransmits). Returns 0 or TC_ACT_SHOT. */
static __always_inline int loupe_sk_assign(struct __sk_buff *skb, struct bpf_sock *sk)
{
    long err = bpf_sk_assign(skb, sk, 0);

    bpf_sk_release(sk);
    if (err) {
        loupe_count(LOUPE_CNT_ASSIGN_FAILED);
        return TC_ACT_SHOT;
    }
    return 0;
}

/* Hands the packet to the proxy socket `sk` (`proxy_port`: the listener's port when `sk` is a
 * listener, else 0). On a bridge port the socket is not assigned here: a socket assigned at a
 * bridge port does not survive the way to the node's IP layer on every kernel (6.18.44 loses
 * it on a redirect to the bridge's ingress and on the bridge's own path up), so the packet is
 * re-addressed to the bridge's MAC, marked with the proxy port, and redirected to the bridge's
 * receive path, where loupe_from_bridge finds the socket again and assigns it. */
static __always_inline int loupe_assign(struct __sk_buff *skb, struct loupe_endpoint *ep, struct bpf_sock *sk,
                                        __u16 proxy_port, __u32 counter)
{
    if (ep->flags & LOUPE_ENDPOINT_BRIDGED) {
        bpf_sk_release(sk);
        if (bpf_skb_store_bytes(skb, 0, ep->gateway_mac, 6, 0)) {
            loupe_count(LOUPE_CNT_ASSIGN_FAILED);
            return TC_ACT_SHOT;
        }
        skb->mark = LOUPE_MARK_TO_PROXY | ((__u32)proxy_port << LOUPE_MARK_PORT_SHIFT);
        loupe_count(counter);
        return bpf_redirect(ep->bridge_ifindex, BPF_F_INGRESS);
    }
    if (loupe_sk_assign(skb, sk))
        return TC_ACT_SHOT;
    skb->mark = (skb->mark & ~LOUPE_MARK_MASK) | LOUPE_MARK_TO_PROXY;
    loupe_count(counter);
    return TC_ACT_OK;
}

/* The proxy's listener as a lookup tuple: 127.0.0.1 / ::1 at the rule's proxy port (a lookup
 * of the loopback address also finds a 0.0.0.0 / [::] socket). */
static __always_inline struct bpf_sock_tuple loupe_listener_tuple(__u8 family, __u16 proxy_port)
{
    struct bpf_sock_tuple ln = {};

    if (family == 4) {
        ln.ipv4.daddr = loupe_listener_v4;
        ln.ipv4.dport = bpf_htons(proxy_port);
    } else {
        ln.ipv6.daddr[3] = bpf_htonl(1);
        ln.ipv6.dport = bpf_htons(proxy_port);
    }
    return ln;
}

/* The connection's own proxy socket (established, or a pending request socket), found by the
 * packet's 4-tuple; not a listener. NULL when there is none. */
static __always_inline struct bpf_sock *loupe_connection_socket(struct __sk_buff *skb, struct loupe_packet *p, __u32 tuple_len)
{
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &p->tuple, tuple_len, BPF_F_CURRENT_NETNS, 0);

    if (sk && sk->state == BPF_TCP_LISTEN) {
        bpf_sk_release(sk);
        return 0;
    }
    return sk;
}

/* The proxy's transparent UDP (DNS) socket at `proxy_port`, or NULL. */
static __always_inline struct bpf_sock *loupe_udp_socket(struct __sk_buff *skb, __u8 family, __u16 proxy_port, __u32 tuple_len)
{
    struct bpf_sock_tuple ln = loupe_listener_tuple(family, proxy_port);

    return bpf_sk_lookup_udp(skb, &ln, tuple_len, BPF_F_CURRENT_NETNS, 0);
}

/* No proxy socket: a visibility-only port passes (fail open), an enforced one drops. */
static __always_inline int loupe_proxy_absent(struct loupe_redirect_value *rule)
{
    if (rule->flags & LOUPE_REDIRECT_ENFORCE) {
        loupe_count(LOUPE_CNT_PROXY_ABSENT_DROP);
        return TC_ACT_SHOT;
    }
    loupe_count(LOUPE_CNT_PROXY_ABSENT_PASS);
    return TC_ACT_OK;
}

/* UDP (DNS): every selected datagram goes to the proxy's transparent UDP socket, which reads
 * the original destination from IP_ORIGDSTADDR. */
static __always_inline int loupe_steer_udp(struct __sk_buff *skb, struct loupe_endpoint *ep, struct loupe_packet *p,
                                           struct loupe_redirect_value *rule, __u32 tuple_len)
{
    struct bpf_sock *sk = loupe_udp_socket(skb, p->family, rule->proxy_port, tuple_len);

    if (!sk)
        return loupe_proxy_absent(rule);
    return loupe_assign(skb, ep, sk, rule->proxy_port, LOUPE_CNT_ASSIGNED_LISTENER);
}

/* A TCP packet no rule selects, from an interface whose endpoint steers replies: when its
 * 4-tuple names a proxy upstream socket (SO_MARK = LOUPE_MARK_FROM_PROXY; bound to a pod's
 * address with IP_TRANSPARENT), it is that socket's reply — hand it over, as the pod it is
 * addressed to never opened that connection. A request/time-wait socket carries no mark: it
 * is the proxy's too when it holds a non-local address, and a local one is delivered locally
 * anyway. Returns -1 when the packet is not such a reply. */
static __always_inline int loupe_steer_reply(struct __sk_buff *skb, struct loupe_endpoint *ep, struct loupe_packet *p, __u32 tuple_len)
{
    struct bpf_sock *sk, *full;

    if (!(ep->flags & LOUPE_ENDPOINT_STEER_REPLIES) || p->proto != IPPROTO_TCP || p->syn || p->first_fragment)
        return -1;
    sk = bpf_skc_lookup_tcp(skb, &p->tuple, tuple_len, BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return -1;
    if (sk->state == BPF_TCP_LISTEN) {
        bpf_sk_release(sk);
        return -1;
    }
    full = bpf_sk_fullsock(sk);
    if (full && full->mark != LOUPE_MARK_FROM_PROXY) {
        bpf_sk_release(sk);
        return -1;
    }
    return loupe_assign(skb, ep, sk, 0, LOUPE_CNT_REPLY_ASSIGNED);
}

static __always_inline int loupe_steer(struct __sk_buff *skb)
{
    struct loupe_packet p = {};
    struct loupe_redirect_value *rule;
    struct loupe_endpoint *ep;
    struct bpf_sock *sk;
    __u32 ifindex = skb->ifindex;
    __u32 tuple_len;

    ep = bpf_map_lookup_elem(&loupe_endpoints, &ifindex);
    if (!ep) {
        loupe_count(LOUPE_CNT_UNMANAGED);
        return TC_ACT_OK;
    }
    switch (loupe_parse_l4(skb, &p)) {
    case LOUPE_PARSE_L4:
        break;
    case LOUPE_PARSE_NOT_L4:
        loupe_count(LOUPE_CNT_NOT_TCP);
        return TC_ACT_OK;
    case LOUPE_PARSE_LATER_FRAGMENT:
        /* No ports to judge; the datagram reaches TCP/UDP only when reassembled with its
         * first fragment, which carries the ports and is judged below. */
        loupe_count(LOUPE_CNT_LATER_FRAGMENT_PASS);
        return TC_ACT_OK;
    default:
        /* The kernel would not deliver it to TCP/UDP as it is, and its port is unknown:
         * passing it could slip past an enforced rule. */
        loupe_count(LOUPE_CNT_UNPARSEABLE_DROP);
        return TC_ACT_SHOT;
    }
    tuple_len = p.family == 4 ? sizeof(p.tuple.ipv4) : sizeof(p.tuple.ipv6);
    /* On an uplink no Egress rule is keyed by its ifindex: only the local pods' Ingress rules
     * (by address) apply, to clients on other nodes and in the world. */
    rule = loupe_find_rule(skb, &p);
    if (!rule) {
        int verdict = loupe_steer_reply(skb, ep, &p, tuple_len);
        if (verdict >= 0)
            return verdict;
        loupe_count(LOUPE_CNT_NOT_SELECTED);
        return TC_ACT_OK;
    }
    if (p.first_fragment) {
        /* A fragmented datagram cannot be handed to the proxy whole (its other fragments carry
         * no ports): an enforced port drops it, a visibility-only one passes it unrecorded. */
        if (rule->flags & LOUPE_REDIRECT_ENFORCE) {
            loupe_count(LOUPE_CNT_FRAGMENT_DROP);
            return TC_ACT_SHOT;
        }
        loupe_count(LOUPE_CNT_FRAGMENT_PASS);
        return TC_ACT_OK;
    }

    if (p.proto == IPPROTO_UDP)
        return loupe_steer_udp(skb, ep, &p, rule, tuple_len);
    /* 1. The connection's own proxy socket (established, or a pending request socket). */
    sk = loupe_connection_socket(skb, &p, tuple_len);
    if (sk)
        return loupe_assign(skb, ep, sk, 0, LOUPE_CNT_ASSIGNED_ESTABLISHED);
    if (!p.syn) {
        loupe_count(LOUPE_CNT_NO_SOCKET_PASS);
        return TC_ACT_OK;
    }
    /* 2. A new connection: the proxy's listener. */
    struct bpf_sock_tuple ln = loupe_listener_tuple(p.family, rule->proxy_port);
    sk = bpf_skc_lookup_tcp(skb, &ln, tuple_len, BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return loupe_proxy_absent(rule);
    if (sk->state != BPF_TCP_LISTEN) {
        bpf_sk_release(sk);
        loupe_count(LOUPE_CNT_PROXY_ABSENT_PASS);
        return TC_ACT_OK;
    }
    return loupe_assign(skb, ep, sk, rule->proxy_port, LOUPE_CNT_ASSIGNED_LISTENER);
}

SEC("tc")
int loupe_from_pod(struct __sk_buff *skb)
{
    return loupe_steer(skb);
}

/* tc ingress on the bridge of bridged pods (cni0): a packet loupe_from_pod handed over
 * (LOUPE_MARK_TO_PROXY, the proxy port in the mark's upper half) is assigned here, where it
 * enters the node's IP layer: to the connection's own proxy socket (found by its 4-tuple), or
 * to the listener / DNS socket at the proxy port. If that socket went away in between, the
 * packet is dropped (counted; the client retransmits and the pod's program judges it again).
 * Everything else is judged as loupe_from_pod would when the bridge is an endpoint itself (an
 * uplink named with --uplink), and passes untouched otherwise. */
SEC("tc")
int loupe_from_bridge(struct __sk_buff *skb)
{
    struct loupe_packet p = {};
    struct bpf_sock *sk;
    __u16 proxy_port;
    __u32 tuple_len;

    if ((skb->mark & LOUPE_MARK_MASK) != LOUPE_MARK_TO_PROXY) {
        /* A bridge named as an uplink (--uplink) is an endpoint as well. */
        __u32 ifindex = skb->ifindex;
        if (bpf_map_lookup_elem(&loupe_endpoints, &ifindex))
            return loupe_steer(skb);
        return TC_ACT_OK;
    }
    proxy_port = skb->mark >> LOUPE_MARK_PORT_SHIFT;
    skb->mark = LOUPE_MARK_TO_PROXY;
    if (loupe_parse_l4(skb, &p) != LOUPE_PARSE_L4 || p.first_fragment)
        return TC_ACT_OK; /* loupe_from_pod hands over only whole TCP/UDP packets */
    tuple_len = p.family == 4 ? sizeof(p.tuple.ipv4) : sizeof(p.tuple.ipv6);
    if (p.proto == IPPROTO_UDP) {
        sk = proxy_port ? loupe_udp_socket(skb, p.family, proxy_port, tuple_len) : 0;
    } else {
        sk = loupe_connection_socket(skb, &p, tuple_len);
        if (!sk && p.syn && proxy_port) {
            struct bpf_sock_tuple ln = loupe_listener_tuple(p.family, proxy_port);
            sk = bpf_skc_lookup_tcp(skb, &ln, tuple_len, BPF_F_CURRENT_NETNS, 0);
            if (sk && sk->state != BPF_TCP_LISTEN) {
                bpf_sk_release(sk);
                sk = 0;
            }
        }
    }
    if (!sk) {
        loupe_count(LOUPE_CNT_BRIDGE_SOCKET_GONE);
        return TC_ACT_SHOT;
    }
    return loupe_sk_assign(skb, sk) ? TC_ACT_SHOT : TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
