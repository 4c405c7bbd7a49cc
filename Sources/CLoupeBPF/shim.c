#include "CLoupeBPF.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <sys/vfs.h>

#define BPF_FS_MAGIC 0xcafe4a11

int loupe_is_bpffs(const char *path)
{
    struct statfs st;
    return statfs(path, &st) == 0 && (unsigned long)st.f_type == BPF_FS_MAGIC;
}

#define LOUPE_TC_HANDLE   0x10c
#define LOUPE_TC_PRIORITY 1

static int quiet_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
    (void)level; (void)fmt; (void)args;
    return 0;
}

void loupe_libbpf_quiet(int quiet)
{
    libbpf_set_print(quiet ? quiet_print : NULL);
}

struct bpf_object *loupe_object_load(const char *object_path, const char *pin_root, int replace_pins, char *errbuf, size_t errlen)
{
    LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = pin_root);
    struct bpf_object *obj = bpf_object__open_file(object_path, &opts);
    int err = libbpf_get_error(obj);
    if (err) {
        snprintf(errbuf, errlen, "open %s: %s", object_path, strerror(-err));
        errno = -err;
        return NULL;
    }
    if (replace_pins) {
        /* Pin paths are known once the object is open: existing pins go, the load pins anew. */
        struct bpf_map *map;
        bpf_object__for_each_map(map, obj) {
            const char *pin = bpf_map__pin_path(map);
            if (pin)
                unlink(pin);
        }
    }
    err = bpf_object__load(obj);
    if (err) {
        snprintf(errbuf, errlen, "load %s: %s", object_path, strerror(-err));
        bpf_object__close(obj);
        errno = -err;
        return NULL;
    }
    return obj;
}

int loupe_tc_attach_ingress(int ifindex, int prog_fd, int *created_qdisc)
{
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
    LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = prog_fd, .handle = LOUPE_TC_HANDLE,
                .priority = LOUPE_TC_PRIORITY, .flags = BPF_TC_F_REPLACE);
    int err = bpf_tc_hook_create(&hook);
    if (err && err != -EEXIST)
        return err;
    *created_qdisc = err == 0;
    return bpf_tc_attach(&hook, &opts);
}

int loupe_tc_detach_ingress(int ifindex, int destroy_qdisc)
{
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = LOUPE_TC_HANDLE, .priority = LOUPE_TC_PRIORITY);
    int err = bpf_tc_detach(&hook, &opts);
    if (destroy_qdisc) {
        hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS; /* = the whole clsact qdisc */
        err = bpf_tc_hook_destroy(&hook);
    }
    return err;
}

int loupe_prog_test_run_skb(int prog_fd, const void *packet, uint32_t size, void *out, uint32_t out_size,
                            uint32_t ifindex, uint32_t *retval, uint32_t *mark)
{
    struct __sk_buff ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.ifindex = ifindex;
    ctx.mark = *mark;
    LIBBPF_OPTS(bpf_test_run_opts, opts,
                .data_in = packet, .data_size_in = size,
                .data_out = out, .data_size_out = out ? out_size : 0,
                .ctx_in = &ctx, .ctx_size_in = sizeof(ctx),
                .ctx_out = &ctx, .ctx_size_out = sizeof(ctx),
                .repeat = 1);
    int err = bpf_prog_test_run_opts(prog_fd, &opts);
    if (err)
        return err;
    *retval = opts.retval;
    *mark = ctx.mark;
    return 0;
}

_Static_assert(sizeof(struct tcp_info) <= sizeof(struct loupe_tcp_info_raw), "tcp_info outgrew loupe_tcp_info_raw");

uint64_t loupe_tcp_bytes_written(const struct loupe_tcp_info_raw *raw)
{
    const struct tcp_info *info = (const struct tcp_info *)raw->bytes;
    return info->tcpi_bytes_sent - info->tcpi_bytes_retrans + info->tcpi_notsent_bytes;
}
