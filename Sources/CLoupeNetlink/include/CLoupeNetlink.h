/* A small rtnetlink shim for Swift: dumps of links, routes, neighbours and the bridge FDB,
 * the policy-routing rule and local route the proxy needs, neighbour probes, and a socket
 * subscribed to link/neighbour/route changes. The netlink structs and macros (NLMSG_*,
 * RTA_*) do not import into Swift, so the message building and parsing live here. */
#ifndef CLOUPENETLINK_H
#define CLOUPENETLINK_H

#include <stdint.h>

struct loupe_nl_link {
    int32_t ifindex;
    int32_t master;      /* ifindex of the bridge this link is a port of, or 0 */
    int32_t is_bridge;   /* IFLA_INFO_KIND "bridge" */
    int32_t is_up;
    uint8_t mac[6];
    char name[16];
    char kind[16];       /* IFLA_INFO_KIND: veth, bridge, … ("" when none) */
};

struct loupe_nl_route {
    int32_t family;      /* AF_INET or AF_INET6 */
    uint8_t dst[16];
    int32_t dst_len;
    int32_t oif;
    int32_t type;        /* RTN_UNICAST, RTN_LOCAL, … */
    int32_t has_gateway;
};

/* An IP neighbour (family AF_INET/AF_INET6: address → MAC on IFINDEX) or a bridge FDB entry
 * (family AF_BRIDGE: MAC on port IFINDEX of bridge MASTER). */
struct loupe_nl_neigh {
    int32_t family;
    int32_t ifindex;
    int32_t master;
    int32_t state;       /* NUD_* */
    uint8_t addr[16];
    uint8_t mac[6];
    int32_t has_mac;
};

/* Each dump fills at most MAX entries and returns how many there are in all (call again with
 * more room when that is larger than MAX), or -errno. */
int loupe_nl_links(struct loupe_nl_link *out, int max);
int loupe_nl_routes(int family, struct loupe_nl_route *out, int max);   /* main table */
int loupe_nl_neighbours(int family, struct loupe_nl_neigh *out, int max); /* AF_INET, AF_INET6, AF_BRIDGE */

/* Adds (ADD=1) or deletes an `fwmark MARK/MASK lookup TABLE pref PRIORITY` rule. 0 or -errno. */
int loupe_nl_rule(int add, int family, uint32_t mark, uint32_t mask, uint32_t table, uint32_t priority);

/* Adds/replaces (ADD=1) or deletes `local default dev OIF table TABLE`. 0 or -errno. */
int loupe_nl_local_default_route(int add, int family, uint32_t table, int oif);

/* Asks the kernel to resolve ADDR (4 or 16 bytes) on IFINDEX (ARP/ND), as `ip neigh … use`
 * does. 0 or -errno. */
int loupe_nl_neigh_probe(int family, const uint8_t *addr, int ifindex);

/* A non-blocking socket subscribed to link, neighbour and IPv4/IPv6 route changes, or -errno. */
int loupe_nl_monitor_open(void);
/* Reads what is queued; returns the number of messages (0: none), or -errno. */
int loupe_nl_monitor_drain(int fd);

#endif
