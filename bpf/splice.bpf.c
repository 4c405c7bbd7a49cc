// SPDX-License-Identifier: GPL-2.0
/* Kernel splice: once the proxy has nothing left to learn from a connection, both of its
 * sockets (the pod's, accepted; the proxy's, to the destination) go into loupe_splice_socks
 * and every skb one of them receives is sent on the other by loupe_splice_verdict, without
 * crossing into userspace.
 *
 * Keys: each socket is stored under its own socket cookie; loupe_splice_pairs maps a cookie to
 * its peer's cookie (and counts the bytes forwarded from it). So the verdict finds the peer
 * with two O(1) lookups keyed by what it already has, the receiving socket's cookie.
 *
 * NIO does not expose its file descriptors, so the proxy inserts the sockets by their 4-tuples
 * instead: it runs loupe_splice_insert with BPF_PROG_TEST_RUN and a loupe_splice_request as
 * the "packet"; the program looks both sockets up and inserts them (tc programs may update a
 * sockhash with a socket they looked up). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "shared/loupe_datapath.h"

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, LOUPE_SPLICE_MAX_SOCKETS);
    __type(key, __u64);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} loupe_splice_socks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, LOUPE_SPLICE_MAX_SOCKETS);
    __type(key, __u64);
    __type(value, struct loupe_splice_peer);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} loupe_splice_pairs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, LOUPE_SPLICE_CNT_MAX);
    __type(key, __u32);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} loupe_splice_counters SEC(".maps");

static __always_inline void splice_count(__u32 which)
{
    __u64 *c = bpf_map_lookup_elem(&loupe_splice_counters, &which);
    if (c)
        *c += 1;
}

SEC("sk_skb/stream_verdict")
int loupe_splice_verdict(struct __sk_buff *skb)
{
    __u64 cookie = bpf_get_socket_cookie(skb);
    struct loupe_splice_peer *peer = bpf_map_lookup_elem(&loupe_splice_pairs, &cookie);
    __u32 len = skb->len;

    /* A FIN arrives as an skb without data: TCP has already recorded it (the proxy sees the
     * EOF and shuts the peer's write side). Redirected, its zero length would make the peer's
     * send worker report EPIPE and drop what it still holds. */
    if (len == 0)
        return SK_DROP;
    if (!peer) {
        /* Not (or no longer) paired: keep the bytes on this socket, readable by the proxy. */
        splice_count(LOUPE_SPLICE_CNT_UNPAIRED);
        return SK_PASS;
    }
    if (bpf_sk_redirect_hash(skb, &loupe_splice_socks, &peer->peer_cookie, 0) != SK_PASS) {
        /* The peer socket left the map (it is closing): nothing can carry these bytes. */
        splice_count(LOUPE_SPLICE_CNT_PEER_GONE);
        return SK_DROP;
    }
    __sync_fetch_and_add(&peer->bytes, len);
    return SK_PASS;
}

SEC("tc")
int loupe_splice_insert(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct loupe_splice_request *req = data;
    struct bpf_sock_tuple tuple;
    struct bpf_sock *a, *b;
    __u64 key;
    __u32 size;
    long err;

    if ((void *)(req + 1) > end)
        return LOUPE_SPLICE_ERR_REQUEST;
    size = req->family == 4 ? sizeof(tuple.ipv4) : sizeof(tuple.ipv6);
    __builtin_memcpy(&tuple, &req->downstream, sizeof(tuple));
    a = bpf_sk_lookup_tcp(skb, &tuple, size, BPF_F_CURRENT_NETNS, 0);
    if (!a)
        return LOUPE_SPLICE_ERR_NO_DOWNSTREAM;
    __builtin_memcpy(&tuple, &req->upstream, sizeof(tuple));
    b = bpf_sk_lookup_tcp(skb, &tuple, size, BPF_F_CURRENT_NETNS, 0);
    if (!b) {
        bpf_sk_release(a);
        return LOUPE_SPLICE_ERR_NO_UPSTREAM;
    }
    key = req->downstream_cookie;
    err = bpf_map_update_elem(&loupe_splice_socks, &key, a, BPF_NOEXIST);
    if (err) {
        bpf_sk_release(a);
        bpf_sk_release(b);
        return LOUPE_SPLICE_ERR_INSERT_DOWNSTREAM | (__u32)(-err & 0xffff);
    }
    key = req->upstream_cookie;
    err = bpf_map_update_elem(&loupe_splice_socks, &key, b, BPF_NOEXIST);
    if (err) {
        key = req->downstream_cookie;
        bpf_map_delete_elem(&loupe_splice_socks, &key);
        bpf_sk_release(a);
        bpf_sk_release(b);
        return LOUPE_SPLICE_ERR_INSERT_UPSTREAM | (__u32)(-err & 0xffff);
    }
    bpf_sk_release(a);
    bpf_sk_release(b);
    return 0;
}

char _license[] SEC("license") = "GPL";
