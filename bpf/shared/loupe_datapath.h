/* Structs and constants shared by the BPF programs and the Swift C target (CLoupeBPF).
 * Keep this header free of BPF-only helpers: userspace includes it too. */
#ifndef LOUPE_DATAPATH_H
#define LOUPE_DATAPATH_H

#include <linux/types.h>
#include <linux/bpf.h> /* struct bpf_sock_tuple */

/* skb->mark bits that route a packet to the local table (ip rule fwmark 0x200/0xf00 lookup 2004). */
#define LOUPE_MARK_TO_PROXY      0x200
#define LOUPE_MARK_MASK          0xf00
/* Mark carried by the proxy's upstream sockets; must not match LOUPE_MARK_TO_PROXY/MASK. */
#define LOUPE_MARK_FROM_PROXY    0xb00
#define LOUPE_ROUTE_TABLE        2004
/* A packet a bridge port hands to the proxy carries the proxy port in the mark's upper half
 * from the port's program to the bridge's (loupe_from_bridge), which clears it. */
#define LOUPE_MARK_PORT_SHIFT    16

/* A managed pod, keyed by the ifindex of its node-side veth. */
struct loupe_endpoint {
    __u32 id;       /* endpoint id shown in flows */
    __u32 flags;    /* LOUPE_ENDPOINT_* */
    __u8  gateway_mac[6]; /* LOUPE_ENDPOINT_BRIDGED: the bridge's MAC */
    __u8  pad[2];
    __u32 bridge_ifindex; /* LOUPE_ENDPOINT_BRIDGED: the bridge */
};

/* The veth is a bridge port (flannel, the `bridge` CNI plugin): a packet handed to the proxy
 * is re-addressed to the bridge's MAC and redirected to the bridge's own receive path, or the
 * bridge would forward it to the destination pod; the bridge's program (loupe_from_bridge)
 * assigns the socket there, as one assigned at the port does not survive the way (br_netfilter
 * drops it on the bridge's path, and kernels as 6.18.44 on the redirect as well). */
#define LOUPE_ENDPOINT_BRIDGED   0x1
/* `--upstream-source pod`: the proxy's upstream sockets are bound to the client pod's address,
 * so a destination's replies are addressed to a pod. A TCP packet from this interface that
 * belongs to such a socket (found by its 4-tuple, carrying LOUPE_MARK_FROM_PROXY) is assigned
 * to it instead of being routed to the pod. */
#define LOUPE_ENDPOINT_STEER_REPLIES 0x2
/* Not a pod: the node's uplink (entry keyed by its ifindex), where clients on other nodes and
 * in the world come in (the local pods' Ingress rules apply to them) and where replies from
 * remote destinations arrive (steered with LOUPE_ENDPOINT_STEER_REPLIES). */
#define LOUPE_ENDPOINT_UPLINK    0x4

/* Redirect rule key. Egress rules: ifindex = the pod's veth, addr all-zero.
 * Ingress rules (applied at the client's veth): ifindex = 0, addr = the server pod's address. */
struct loupe_redirect_key {
    __u32 ifindex;
    __u8  addr[16];   /* IPv4 in the first 4 bytes */
    __u16 port;       /* host byte order */
    __u8  family;     /* 4 or 6 */
    __u8  proto;      /* IPPROTO_TCP or IPPROTO_UDP */
};

#define LOUPE_REDIRECT_ENFORCE   0x1  /* fail closed when the proxy is absent */
#define LOUPE_REDIRECT_INGRESS   0x2  /* the rule came from the server's Ingress annotation */

struct loupe_redirect_value {
    __u16 proxy_port;
    __u8  flags;
    __u8  pad;
    __u32 reserved;
};

/* Per-outcome counters (per-CPU array index). Names in Swift: DatapathCounter (same order). */
enum loupe_counter {
    LOUPE_CNT_UNMANAGED = 0,       /* packet from a veth that is not a managed endpoint: pass */
    LOUPE_CNT_NOT_TCP,             /* neither TCP nor UDP behind the IP headers (or not IP): pass */
    LOUPE_CNT_NOT_SELECTED,        /* no redirect rule for this port: pass */
    LOUPE_CNT_ASSIGNED_ESTABLISHED,/* selected, proxy socket of the connection found: assigned */
    LOUPE_CNT_ASSIGNED_LISTENER,   /* selected SYN (or UDP datagram), proxy listener found: assigned */
    LOUPE_CNT_PROXY_ABSENT_PASS,   /* selected SYN, no proxy listener, visibility only: pass (fail open) */
    LOUPE_CNT_PROXY_ABSENT_DROP,   /* selected SYN, no proxy listener, enforced: drop (fail closed) */
    LOUPE_CNT_NO_SOCKET_PASS,      /* selected non-SYN packet of a connection the proxy does not own: pass */
    LOUPE_CNT_ASSIGN_FAILED,       /* bpf_sk_assign refused: drop (the client retransmits) */
    LOUPE_CNT_UNPARSEABLE_DROP,    /* IP whose headers cannot be walked to its ports (truncated, IHL < 5,
                                    * IPv6 extension chain too long, tiny first fragment): drop */
    LOUPE_CNT_FRAGMENT_DROP,       /* first fragment of a datagram to an enforced port: drop */
    LOUPE_CNT_FRAGMENT_PASS,       /* first fragment to a visibility-only port: pass unrecorded (fail open) */
    LOUPE_CNT_LATER_FRAGMENT_PASS, /* non-first fragment (no ports; its first fragment is judged): pass */
    LOUPE_CNT_REPLY_ASSIGNED,      /* a destination's reply to a proxy upstream socket bound to a pod's
                                    * address (LOUPE_ENDPOINT_STEER_REPLIES): assigned to it */
    LOUPE_CNT_BRIDGE_SOCKET_GONE,  /* handed to the bridge for the proxy (LOUPE_ENDPOINT_BRIDGED), its socket
                                    * gone when the bridge's program looked again: drop (the client retransmits) */
    LOUPE_CNT_MAX,
};

/* Kernel splice (bpf/splice.bpf.c). */
#define LOUPE_SPLICE_MAX_SOCKETS 65536
/* bpf_skb_adjust_room calls to cut repeated bytes off an skb's front (4095 bytes each). */
#define LOUPE_SPLICE_TRIM_CALLS 64

/* loupe_splice_pairs value, keyed by a socket's cookie. */
struct loupe_splice_peer {
    __u64 peer_cookie;  /* the socket that receives what this one receives */
    __u64 bytes;        /* bytes forwarded from this socket to its peer by the kernel */
    __u64 forwarded_seq;/* bit 32 set once the verdict forwarded anything; below it, the TCP
                         * sequence just past the last byte forwarded (see splice.bpf.c) */
};

/* The BPF_PROG_TEST_RUN "packet" of loupe_splice_insert: both sockets as an arriving packet
 * would name them (saddr/sport = the socket's remote end, daddr/dport = its local end),
 * network byte order. Starts with 16 bytes of room: test runs need an Ethernet header's worth. */
struct loupe_splice_request {
    __u8  reserved[16];
    __u32 family;       /* 4 or 6 */
    __u32 pad;
    struct bpf_sock_tuple downstream;
    struct bpf_sock_tuple upstream;
    __u64 downstream_cookie;
    __u64 upstream_cookie;
};

/* loupe_splice_insert's return value: 0, or one of these (insert errors carry -errno in the
 * low 16 bits). */
#define LOUPE_SPLICE_ERR_REQUEST          0x10000
#define LOUPE_SPLICE_ERR_NO_DOWNSTREAM    0x20000
#define LOUPE_SPLICE_ERR_NO_UPSTREAM      0x30000
#define LOUPE_SPLICE_ERR_INSERT_DOWNSTREAM 0x40000
#define LOUPE_SPLICE_ERR_INSERT_UPSTREAM  0x50000

/* loupe_splice_counters (per-CPU array index). */
enum loupe_splice_counter {
    LOUPE_SPLICE_CNT_UNPAIRED = 0, /* skb on a spliced socket without a pair entry: kept for the proxy */
    LOUPE_SPLICE_CNT_PEER_GONE,    /* the peer left the map (closing): skb dropped */
    LOUPE_SPLICE_CNT_REPEATED,     /* an skb of bytes already forwarded: dropped */
    LOUPE_SPLICE_CNT_TRIMMED,      /* an skb starting with bytes already forwarded: those cut off */
    LOUPE_SPLICE_CNT_UNTRIMMED,    /* ... and they could not be cut off: dropped (stream broken) */
    LOUPE_SPLICE_CNT_MAX,
};

#endif
