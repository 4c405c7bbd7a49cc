// SPDX-License-Identifier: GPL-2.0
/* Kernel splice: once the proxy has nothing left to learn from a connection, both of its
 * sockets (the pod's, accepted; the proxy's, to the destination) go into loupe_splice_socks
 * and every skb one of them receives is sent on the other by loupe_splice_verdict, without
 * crossing into userspace.
 *
 * Keys: each socket is stored under its own socket cookie; loupe_splice_pairs maps a cookie to
 * its peer's cookie (and counts the bytes forwarded from it, and how far in its TCP sequence).
 * So the verdict finds the peer with two O(1) lookups keyed by what it already has, the
 * receiving socket's cookie.
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

/* The kernel's skb, for its control block: struct tcp_skb_cb starts with seq and end_seq. */
struct sk_buff___loupe {
    char cb[48];
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

static __always_inline void splice_count(__u32 which)
{
    __u64 *c = bpf_map_lookup_elem(&loupe_splice_counters, &which);
    if (c)
        *c += 1;
}

/* Kernel 6.18 now and then hands the verdict of a busy socket an skb that starts with bytes it
 * already forwarded (seen under CPU contention with both directions busy: one 64 KiB GRO skb's
 * worth in ~2-5 % of 200 MiB echo transfers). Forwarded again, they would reach the peer twice.
 * TCP sequence numbers say how many leading bytes of this skb were forwarded before: returns
 * that many (all of them: a copy to drop). The compare-and-swap keeps two verdicts running at
 * once on one socket from both taking the same bytes. */
static __always_inline __u32 splice_already_forwarded(struct __sk_buff *skb, struct loupe_splice_peer *peer, __u32 len)
{
    struct sk_buff___loupe *kskb = bpf_cast_to_kern_ctx(skb);
    struct { __u32 seq; __u32 end_seq; } tcb = {};
    __u64 *next = &peer->forwarded_seq;
    __u32 end;

    if (bpf_probe_read_kernel(&tcb, sizeof(tcb), kskb->cb) != 0)
        return 0;
    end = tcb.seq + len;
#pragma clang loop unroll(disable)
    for (int i = 0; i < 4; i++) {
        __u64 old = *(volatile __u64 *)next;
        __u32 repeated = 0;

        if (old >> 32) {
            __u32 forwarded_end = (__u32)old;
            if ((__s32)(end - forwarded_end) <= 0)
                return len;
            if ((__s32)(tcb.seq - forwarded_end) < 0)
                repeated = forwarded_end - tcb.seq;
        }
        if (__sync_val_compare_and_swap(next, old, (1ULL << 32) | end) == old)
            return repeated;
    }
    return 0;
}

/* Removes the first n bytes of the skb (bpf_skb_adjust_room: at most 4095 a call). A global
 * function: verified once on its own, not once per path of its caller. */
__attribute__((noinline)) int splice_trim_front(struct __sk_buff *skb, __u32 n)
{
    for (int i = 0; i < LOUPE_SPLICE_TRIM_CALLS && n > 0; i++) {
        __u32 step = n > 4095 ? 4095 : n;
        if (bpf_skb_adjust_room(skb, -(__s32)step, 0, 0) != 0)
            return -1;
        n -= step;
    }
    return n == 0 ? 0 : -1;
}

SEC("sk_skb/stream_verdict")
int loupe_splice_verdict(struct __sk_buff *skb)
{
    __u64 cookie = bpf_get_socket_cookie(skb);
    struct loupe_splice_peer *peer = bpf_map_lookup_elem(&loupe_splice_pairs, &cookie);
    __u32 len = skb->len, repeated;

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
    repeated = splice_already_forwarded(skb, peer, len);
    if (repeated == len) {
        splice_count(LOUPE_SPLICE_CNT_REPEATED);
        return SK_DROP;
    }
    if (repeated > 0) {
        if (splice_trim_front(skb, repeated) != 0) {
            /* Nothing right is left to do with it: the stream is broken either way. */
            splice_count(LOUPE_SPLICE_CNT_UNTRIMMED);
            return SK_DROP;
        }
        splice_count(LOUPE_SPLICE_CNT_TRIMMED);
        len -= repeated;
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
