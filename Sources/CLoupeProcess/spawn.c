#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stddef.h>
#include <unistd.h>
#include "CLoupeProcess.h"

extern char **environ;

/* Every signal a process may set a disposition for: SIGKILL and SIGSTOP cannot have one, and
 * some libcs fail the spawn when asked to reset them. */
static void loupe_catchable_signals(sigset_t *set)
{
    sigfillset(set);
    sigdelset(set, SIGKILL);
    sigdelset(set, SIGSTOP);
}

int loupe_spawn(char *const argv[], char *const envp[], const char *cwd,
                int stdin_fd, int stdout_fd, int stderr_fd, int new_session, pid_t *pid)
{
    posix_spawnattr_t attr;
    posix_spawn_file_actions_t actions;
    sigset_t none, all;
    short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    int rc;

    if (new_session)
        flags |= POSIX_SPAWN_SETSID;
    sigemptyset(&none);
    loupe_catchable_signals(&all);
    if ((rc = posix_spawnattr_init(&attr)) != 0)
        return rc;
    if ((rc = posix_spawn_file_actions_init(&actions)) != 0) {
        posix_spawnattr_destroy(&attr);
        return rc;
    }
    rc = posix_spawnattr_setsigmask(&attr, &none);
    if (!rc) rc = posix_spawnattr_setsigdefault(&attr, &all);
    if (!rc) rc = posix_spawnattr_setflags(&attr, flags);
    if (!rc) rc = stdin_fd >= 0 ? posix_spawn_file_actions_adddup2(&actions, stdin_fd, 0)
                                : posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    if (!rc && stdout_fd >= 0) rc = posix_spawn_file_actions_adddup2(&actions, stdout_fd, 1);
    if (!rc && stderr_fd >= 0) rc = posix_spawn_file_actions_adddup2(&actions, stderr_fd, 2);
    /* Nothing else of ours leaks into the child (the agent holds sockets and BPF objects). */
    if (!rc) rc = posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    if (!rc && cwd) rc = posix_spawn_file_actions_addchdir_np(&actions, cwd);
    if (!rc) rc = posix_spawnp(pid, argv[0], &actions, &attr, argv, envp ? envp : environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    return rc;
}

int loupe_exec(char *const argv[])
{
    sigset_t none;
    struct sigaction sa;

    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        /* Handlers are reset by exec itself; ignored signals stay ignored unless reset here. */
        if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN) {
            sa.sa_handler = SIG_DFL;
            sa.sa_flags = 0;
            sigemptyset(&sa.sa_mask);
            sigaction(sig, &sa, NULL);
        }
    }
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
    execvp(argv[0], argv);
    return -1;
}

void loupe_stdout_line_buffered(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
}
