/* Batched datagram I/O for the DNS proxy: recvmmsg(2) and sendmmsg(2). Their struct mmsghdr
 * is declared only with _GNU_SOURCE, which Swift's Glibc module is built without; this is the
 * same layout (checked in CLoupeSocket.c). */
#ifndef CLOUPESOCKET_H
#define CLOUPESOCKET_H

#include <sys/socket.h>

struct loupe_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};

/* Up to COUNT datagrams; the number received, or -1 with errno. */
int loupe_recvmmsg(int fd, struct loupe_mmsghdr *msgs, unsigned int count, int flags);
/* Up to COUNT datagrams; the number sent (fewer: the next one failed), or -1 with errno. */
int loupe_sendmmsg(int fd, struct loupe_mmsghdr *msgs, unsigned int count, int flags);

#endif
