/* LD_PRELOAD shim for the benchmark's anchors that have no "transparent listener" option of
 * their own (nginx 1.22's `listen`, dnsdist 1.7's `setLocal`): a socket bound to one of the
 * ports in LOUPE_TRANSPARENT_PORTS (comma-separated; default 15001,15053) gets IP_TRANSPARENT
 * (IPV6_TRANSPARENT for v6) before bind, as Loupe, Envoy (`transparent: true`) and HAProxy
 * (`bind … transparent`) set on theirs. Behind bpf_sk_assign the listener must be transparent,
 * or the SYN-ACK / reply from the original (non-local) destination address cannot be routed.
 * Built by bench/run.sh: gcc -shared -fPIC -O2 -o .build/transparent_bind.so bench/transparent_bind.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IPV6_TRANSPARENT
#define IPV6_TRANSPARENT 75
#endif

static int port_selected(unsigned port)
{
    const char *list = getenv("LOUPE_TRANSPARENT_PORTS");
    char buf[256];
    strncpy(buf, list ? list : "15001,15053", sizeof(buf) - 1);
    buf[sizeof(buf) - 1] = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        if ((unsigned)atoi(tok) == port)
            return 1;
    return 0;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    static int (*real_bind)(int, const struct sockaddr *, socklen_t);
    int one = 1;

    if (!real_bind)
        real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in) &&
        port_selected(ntohs(((const struct sockaddr_in *)addr)->sin_port)))
        setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one));
    if (addr && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6) &&
        port_selected(ntohs(((const struct sockaddr_in6 *)addr)->sin6_port)))
        setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one));
    return real_bind(fd, addr, len);
}
