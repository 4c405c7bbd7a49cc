#include <malloc.h>
#include <stdbool.h>
#include <stddef.h>
#include "CLoupeProcess.h"

/* jemalloc's control interface, present when the binary links jemalloc (the `loupe` executable
 * does); weak, so a binary without it (the test runners) falls back to glibc's trim. */
extern int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen) __attribute__((weak));

/* MALLCTL_ARENAS_ALL: the pseudo arena index that means every arena. */
#define LOUPE_ARENAS_ALL "4096"

int loupe_allocator_background_purge(void)
{
    if (!mallctl) return 0;
    bool on = true;
    return mallctl("background_thread", NULL, NULL, &on, sizeof on) == 0;
}

void loupe_allocator_release_free_memory(void)
{
    if (mallctl) {
        mallctl("arena." LOUPE_ARENAS_ALL ".purge", NULL, NULL, NULL, 0);
    } else {
        malloc_trim(0);
    }
}
