#define _GNU_SOURCE
#include <stddef.h>
#include <sys/socket.h>
#include "CLoupeSocket.h"

_Static_assert(sizeof(struct loupe_mmsghdr) == sizeof(struct mmsghdr), "struct mmsghdr layout");
_Static_assert(offsetof(struct loupe_mmsghdr, msg_len) == offsetof(struct mmsghdr, msg_len), "struct mmsghdr layout");

int loupe_recvmmsg(int fd, struct loupe_mmsghdr *msgs, unsigned int count, int flags) {
    return recvmmsg(fd, (struct mmsghdr *)msgs, count, flags, NULL);
}

int loupe_sendmmsg(int fd, struct loupe_mmsghdr *msgs, unsigned int count, int flags) {
    return sendmmsg(fd, (struct mmsghdr *)msgs, count, flags);
}
