/* Starting child processes with a clean signal state (used by LoupeProcess.ChildProcess).
 *
 * A thread of a Swift program blocks most signals (the concurrency runtime's and NIO's threads
 * do), and NIO ignores SIGPIPE. A child inherits both the mask and ignored dispositions through
 * fork/exec: a dnsmasq started that way never sees SIGCHLD or SIGTERM. Every child of Loupe
 * starts here instead: empty signal mask, default dispositions, its own session. */
#ifndef CLOUPE_PROCESS_H
#define CLOUPE_PROCESS_H

#include <sys/types.h>

/* posix_spawnp(argv[0]) with an empty signal mask, every catchable signal at SIG_DFL and (when
 * new_session) a new session; stdin/stdout/stderr from the given descriptors (-1: /dev/null for
 * stdin, inherited for the others), every other descriptor closed; cwd when not NULL; envp (NULL: this process's environment).
 * Returns 0 and the child's PID in *pid, or an errno value. */
int loupe_spawn(char *const argv[], char *const envp[], const char *cwd,
                int stdin_fd, int stdout_fd, int stderr_fd, int new_session, pid_t *pid);

/* Empties this thread's signal mask, sets every ignored signal back to SIG_DFL, then
 * execvp(argv[0], argv). Returns only on failure (errno set). */
int loupe_exec(char *const argv[]);

/* stdout line-buffered (a follower piping `loupe observe -f` sees each flow as it comes). In C
 * because Swift 6 refuses to name the global `stdout`. */
void loupe_stdout_line_buffered(void);

/* The allocator (jemalloc in `loupe`, glibc's malloc in binaries without it).
 * loupe_allocator_background_purge: jemalloc's background thread returns freed pages to the
 * kernel a few seconds after a burst, also while the process is idle (without it, jemalloc
 * purges only inside later allocator calls). Returns 1 when enabled, 0 without jemalloc.
 * loupe_allocator_release_free_memory: returns every free page now (jemalloc: purge all
 * arenas; glibc: malloc_trim). */
int loupe_allocator_background_purge(void);
void loupe_allocator_release_free_memory(void);

#endif
