#define _GNU_SOURCE
#include "CLoupeNetlink.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/fib_rules.h>
#include <linux/if_ether.h>
#include <net/if.h>
#include <netinet/in.h>

#ifndef AF_BRIDGE
#define AF_BRIDGE 7
#endif

struct request {
    struct nlmsghdr h;
    union {
        struct ifinfomsg ifi;
        struct rtmsg rt;
        struct ndmsg nd;
        struct fib_rule_hdr fr;
    } body;
    char attrs[256];
};

static int nl_open(unsigned groups)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return -errno;
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK, .nl_groups = groups};
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    int size = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    return fd;
}

static void add_attr(struct request *r, unsigned short type, const void *data, unsigned short len)
{
    struct rtattr *a = (struct rtattr *)((char *)r + NLMSG_ALIGN(r->h.nlmsg_len));
    a->rta_type = type;
    a->rta_len = RTA_LENGTH(len);
    if (len)
        memcpy(RTA_DATA(a), data, len);
    r->h.nlmsg_len = NLMSG_ALIGN(r->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

typedef void (*visit_fn)(struct nlmsghdr *h, void *ctx);

/* Sends R and reads the replies: a dump until NLMSG_DONE (each message to VISIT), or the ack. */
static int transact(struct request *r, visit_fn visit, void *ctx)
{
    int fd = nl_open(0);
    if (fd < 0)
        return fd;
    static __thread unsigned seq;
    r->h.nlmsg_seq = ++seq;
    if (send(fd, r, r->h.nlmsg_len, 0) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    char buf[65536] __attribute__((aligned(4)));
    int result = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            result = -errno;
            break;
        }
        struct nlmsghdr *h = (struct nlmsghdr *)buf;
        int done = 0;
        for (; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq != r->h.nlmsg_seq)
                continue;
            if (h->nlmsg_type == NLMSG_DONE) {
                done = 1;
                break;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                struct nlmsgerr *e = NLMSG_DATA(h);
                result = e->error; /* 0 = ack */
                done = 1;
                break;
            }
            if (visit)
                visit(h, ctx);
        }
        if (done)
            break;
    }
    close(fd);
    return result;
}

static void init_request(struct request *r, unsigned short type, unsigned short flags, size_t body)
{
    memset(r, 0, sizeof(*r));
    r->h.nlmsg_len = NLMSG_LENGTH(body);
    r->h.nlmsg_type = type;
    r->h.nlmsg_flags = NLM_F_REQUEST | flags;
}

/* ---- links ---- */

struct links_ctx { struct loupe_nl_link *out; int max; int count; };

static void visit_link(struct nlmsghdr *h, void *p)
{
    struct links_ctx *c = p;
    if (h->nlmsg_type != RTM_NEWLINK)
        return;
    struct ifinfomsg *ifi = NLMSG_DATA(h);
    int i = c->count++;
    if (i >= c->max)
        return;
    struct loupe_nl_link *l = &c->out[i];
    memset(l, 0, sizeof(*l));
    l->ifindex = ifi->ifi_index;
    l->is_up = (ifi->ifi_flags & IFF_UP) != 0;
    int len = IFLA_PAYLOAD(h);
    for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        switch (a->rta_type) {
        case IFLA_IFNAME:
            strncpy(l->name, RTA_DATA(a), sizeof(l->name) - 1);
            break;
        case IFLA_MASTER:
            l->master = *(int32_t *)RTA_DATA(a);
            break;
        case IFLA_ADDRESS:
            if (RTA_PAYLOAD(a) == 6)
                memcpy(l->mac, RTA_DATA(a), 6);
            break;
        case IFLA_LINKINFO: {
            int ilen = RTA_PAYLOAD(a);
            for (struct rtattr *b = RTA_DATA(a); RTA_OK(b, ilen); b = RTA_NEXT(b, ilen)) {
                if (b->rta_type == IFLA_INFO_KIND) {
                    strncpy(l->kind, RTA_DATA(b), sizeof(l->kind) - 1);
                    l->is_bridge = strcmp(l->kind, "bridge") == 0;
                }
            }
            break;
        }
        }
    }
}

int loupe_nl_links(struct loupe_nl_link *out, int max)
{
    struct request r;
    init_request(&r, RTM_GETLINK, NLM_F_DUMP, sizeof(struct ifinfomsg));
    r.body.ifi.ifi_family = AF_UNSPEC;
    struct links_ctx c = {out, max, 0};
    int rc = transact(&r, visit_link, &c);
    return rc < 0 ? rc : c.count;
}

/* ---- routes ---- */

struct routes_ctx { struct loupe_nl_route *out; int max; int count; };

static void visit_route(struct nlmsghdr *h, void *p)
{
    struct routes_ctx *c = p;
    if (h->nlmsg_type != RTM_NEWROUTE)
        return;
    struct rtmsg *rt = NLMSG_DATA(h);
    uint32_t table = rt->rtm_table;
    int len = RTM_PAYLOAD(h);
    struct loupe_nl_route route = {.family = rt->rtm_family, .dst_len = rt->rtm_dst_len, .type = rt->rtm_type};
    for (struct rtattr *a = RTM_RTA(rt); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        switch (a->rta_type) {
        case RTA_TABLE:
            table = *(uint32_t *)RTA_DATA(a);
            break;
        case RTA_DST:
            memcpy(route.dst, RTA_DATA(a), RTA_PAYLOAD(a) > 16 ? 16 : RTA_PAYLOAD(a));
            break;
        case RTA_OIF:
            route.oif = *(int32_t *)RTA_DATA(a);
            break;
        case RTA_GATEWAY:
            route.has_gateway = 1;
            break;
        }
    }
    if (table != RT_TABLE_MAIN)
        return;
    int i = c->count++;
    if (i < c->max)
        c->out[i] = route;
}

int loupe_nl_routes(int family, struct loupe_nl_route *out, int max)
{
    struct request r;
    init_request(&r, RTM_GETROUTE, NLM_F_DUMP, sizeof(struct rtmsg));
    r.body.rt.rtm_family = family;
    struct routes_ctx c = {out, max, 0};
    int rc = transact(&r, visit_route, &c);
    return rc < 0 ? rc : c.count;
}

/* ---- neighbours and FDB ---- */

struct neigh_ctx { struct loupe_nl_neigh *out; int max; int count; };

static void visit_neigh(struct nlmsghdr *h, void *p)
{
    struct neigh_ctx *c = p;
    if (h->nlmsg_type != RTM_NEWNEIGH)
        return;
    struct ndmsg *nd = NLMSG_DATA(h);
    struct loupe_nl_neigh n = {.family = nd->ndm_family, .ifindex = nd->ndm_ifindex, .state = nd->ndm_state};
    int len = RTM_PAYLOAD(h);
    for (struct rtattr *a = (struct rtattr *)((char *)nd + NLMSG_ALIGN(sizeof(*nd))); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        switch (a->rta_type) {
        case NDA_DST:
            memcpy(n.addr, RTA_DATA(a), RTA_PAYLOAD(a) > 16 ? 16 : RTA_PAYLOAD(a));
            break;
        case NDA_LLADDR:
            if (RTA_PAYLOAD(a) == 6) {
                memcpy(n.mac, RTA_DATA(a), 6);
                n.has_mac = 1;
            }
            break;
        case NDA_MASTER:
            n.master = *(int32_t *)RTA_DATA(a);
            break;
        }
    }
    int i = c->count++;
    if (i < c->max)
        c->out[i] = n;
}

int loupe_nl_neighbours(int family, struct loupe_nl_neigh *out, int max)
{
    struct request r;
    init_request(&r, RTM_GETNEIGH, NLM_F_DUMP, sizeof(struct ndmsg));
    r.body.nd.ndm_family = family;
    struct neigh_ctx c = {out, max, 0};
    int rc = transact(&r, visit_neigh, &c);
    return rc < 0 ? rc : c.count;
}

int loupe_nl_neigh_probe(int family, const uint8_t *addr, int ifindex)
{
    struct request r;
    init_request(&r, RTM_NEWNEIGH, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, sizeof(struct ndmsg));
    r.body.nd.ndm_family = family;
    r.body.nd.ndm_ifindex = ifindex;
    r.body.nd.ndm_state = NUD_NONE;
    r.body.nd.ndm_flags = NTF_USE;
    add_attr(&r, NDA_DST, addr, family == AF_INET ? 4 : 16);
    return transact(&r, NULL, NULL);
}

/* ---- policy routing ---- */

int loupe_nl_rule(int add, int family, uint32_t mark, uint32_t mask, uint32_t table, uint32_t priority)
{
    struct request r;
    init_request(&r, add ? RTM_NEWRULE : RTM_DELRULE, NLM_F_ACK | (add ? NLM_F_CREATE | NLM_F_EXCL : 0),
                 sizeof(struct fib_rule_hdr));
    r.body.fr.family = family;
    r.body.fr.action = FR_ACT_TO_TBL;
    r.body.fr.table = table < 256 ? table : RT_TABLE_UNSPEC;
    add_attr(&r, FRA_TABLE, &table, 4);
    add_attr(&r, FRA_FWMARK, &mark, 4);
    add_attr(&r, FRA_FWMASK, &mask, 4);
    if (add)
        add_attr(&r, FRA_PRIORITY, &priority, 4);
    return transact(&r, NULL, NULL);
}

int loupe_nl_local_default_route(int add, int family, uint32_t table, int oif)
{
    struct request r;
    init_request(&r, add ? RTM_NEWROUTE : RTM_DELROUTE, NLM_F_ACK | (add ? NLM_F_CREATE | NLM_F_REPLACE : 0),
                 sizeof(struct rtmsg));
    r.body.rt.rtm_family = family;
    r.body.rt.rtm_table = table < 256 ? table : RT_TABLE_UNSPEC;
    r.body.rt.rtm_protocol = RTPROT_BOOT;
    r.body.rt.rtm_scope = RT_SCOPE_HOST;
    r.body.rt.rtm_type = RTN_LOCAL;
    r.body.rt.rtm_dst_len = 0;
    add_attr(&r, RTA_TABLE, &table, 4);
    add_attr(&r, RTA_OIF, &oif, 4);
    return transact(&r, NULL, NULL);
}

/* ---- changes ---- */

int loupe_nl_monitor_open(void)
{
    int fd = nl_open(RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE);
    if (fd < 0)
        return fd;
    int one = 1;
    /* An overrun (ENOBUFS) only means "something changed": the caller re-reads everything. */
    setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one));
    return fd;
}

int loupe_nl_monitor_drain(int fd)
{
    char buf[65536] __attribute__((aligned(4)));
    int messages = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return messages;
            if (errno == ENOBUFS)
                return messages + 1;
            return -errno;
        }
        if (n == 0)
            return messages;
        struct nlmsghdr *h = (struct nlmsghdr *)buf;
        for (; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n))
            messages++;
    }
}
