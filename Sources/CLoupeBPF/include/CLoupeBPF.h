/* C shim over libbpf for Swift: LIBBPF_OPTS-style structs do not import, so the calls that
 * need them live here. Everything else (maps, fds) Swift calls through <bpf/bpf.h> directly. */
#ifndef CLOUPEBPF_H
#define CLOUPEBPF_H

#include <stdint.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
/* One struct layout for both sides: the header the BPF programs include. */
#include "../../../bpf/shared/loupe_datapath.h"

/* Opens OBJECT_PATH with maps pinned under PIN_ROOT (reusing pins that exist), sets the
 * listener address global, loads it. Returns NULL and sets errno on failure. */
struct bpf_object *loupe_object_load(const char *object_path, const char *pin_root, int replace_pins, char *errbuf, size_t errlen);

/* Attaches PROG_FD to the tc ingress hook of IFINDEX (creating clsact when missing, and then
 * setting *CREATED_QDISC), replacing a filter of ours already there. Returns 0 or -errno. */
int loupe_tc_attach_ingress(int ifindex, int prog_fd, int *created_qdisc);

/* Removes our filter from IFINDEX's tc ingress hook, and the clsact qdisc too when
 * DESTROY_QDISC (only when we created it: other tools may share it). Returns 0 or -errno. */
int loupe_tc_detach_ingress(int ifindex, int destroy_qdisc);

/* BPF_PROG_TEST_RUN of a tc program on PACKET with skb->ifindex = IFINDEX and skb->mark = *MARK;
 * *MARK is the mark the program left, and OUT (when not NULL) receives up to OUT_SIZE bytes of
 * the packet as the program left it. Returns 0 or -errno. */
int loupe_prog_test_run_skb(int prog_fd, const void *packet, uint32_t size, void *out, uint32_t out_size,
                            uint32_t ifindex, uint32_t *retval, uint32_t *mark);

/* Room for the kernel's struct tcp_info (getsockopt TCP_INFO through NIO, which has no fds to
 * share: it takes a value of any size). */
struct loupe_tcp_info_raw { uint8_t bytes[512]; };

/* Bytes the application has written into the socket so far: sent once (bytes_sent minus
 * retransmissions) plus not yet sent. */
uint64_t loupe_tcp_bytes_written(const struct loupe_tcp_info_raw *info);

/* getsockopt SO_MEMINFO (u32 per SK_MEMINFO_*; [0] = receive memory in use: queued skbs). */
struct loupe_meminfo_raw { uint32_t values[16]; };

/* 1 when PATH is a mounted bpffs, 0 otherwise. */
int loupe_is_bpffs(const char *path);

/* Silences libbpf's stderr logging (or restores it). */
void loupe_libbpf_quiet(int quiet);

#endif
