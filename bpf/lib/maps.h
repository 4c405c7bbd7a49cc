/* Maps of the tc datapath, pinned by name under /sys/fs/bpf/loupe/. */
#ifndef LOUPE_LIB_MAPS_H
#define LOUPE_LIB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "../shared/loupe_datapath.h"

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, struct loupe_endpoint);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} loupe_endpoints SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, struct loupe_redirect_key);
    __type(value, struct loupe_redirect_value);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} loupe_redirects SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, LOUPE_CNT_MAX);
    __type(key, __u32);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} loupe_counters SEC(".maps");

static __always_inline void loupe_count(__u32 which)
{
    __u64 *c = bpf_map_lookup_elem(&loupe_counters, &which);
    if (c)
        *c += 1;
}

#endif
