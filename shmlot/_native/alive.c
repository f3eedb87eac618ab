/* Liveness: is a process, or a parked thread, alive? One set of rules (docs/design.md, section
 * "Liveness"), one predicate for processes, sl_process_alive, which every judgement of an owner
 * or a holder goes through, C and Python (_fast.process_alive):
 *
 * - a process is (pid, start time); pid 0 is never alive;
 * - dead when the pid does not exist, when /proc shows it a zombie or exiting (killed, not yet
 *   waited for: it will never release anything), or when its start time differs from the one
 *   recorded (a reused pid is another process);
 * - alive when /proc cannot tell (another user's process, hidepid): never take from a process
 *   we cannot see;
 * - our own pid is alive only with our own start time (a word left by an earlier process that
 *   had our pid is not ours).
 *
 * A parked *thread* is judged by sl_thread_gone: its process by the predicate, then the thread
 * itself from /proc/PID/task/TID/stat.
 *
 * sl_peer_alive gives the cheap answer an unparker needs when it chooses whom to wake. An unparker
 * that hands a wake-up (or the lock) to a dead waiter loses it, so every choice of one thread
 * asks about the chosen one, under the bucket lock, and an unlock of a Condition's lock asks
 * about the next waiter too. /proc answers exactly but costs an open, a read and a parse. Here
 * the answer comes from private memory and the kernel only, never from the segment, by the same
 * rules:
 * - a per-process cache of pidfds, one per peer process (pid + start time), opened on first sight
 *   and verified then, so that a reused pid is never taken for the process the slot names: by
 *   the pidfd's inode, which the parker recorded in its slot (pidfs gives every process its own
 *   inode, never reused while the system runs), else by the start time read from /proc; at
 *   most CACHE_SIZE of them, under a private mutex;
 * - a process is dead when its pidfd polls readable: it has exited, zombies included (a killed
 *   process that nobody has waited for yet must not absorb a wake-up). The kernel reports the
 *   exit once every thread of the process has exited: for the moment a killed process's other
 *   threads take to finish exiting, a waiter among them still counts as alive (a wake-up it
 *   takes then is lost to it, as one taken just before the kill would be);
 * - a thread other than a process's main thread is looked up with tgkill(pid, tid, 0): a thread
 *   that is gone from a live process (the process exec'd) is dead too;
 * - our own process is alive (its threads are parked, not gone).
 *
 * File descriptors can be closed behind our back (a daemon closing every descriptor) and their
 * numbers reused for something else, whose poll would say anything. So each answer is taken
 * only while fstat shows the descriptor is still the pidfd opened (its device and inode; on
 * pidfs every process has its own inode, and without pidfs, where all pidfds share one inode,
 * the cache is not used at all), and a "dead" answer is confirmed through /proc, deaths being
 * rare. Where the cache cannot answer (no pidfd_open, no pidfs, /proc hidden, the cache full of
 * live processes) the caller asks /proc instead (-1).
 *
 * A forked child starts with an empty cache (it closes the copies of the parent's pidfds): its
 * mutex may have been held by another thread of the parent at the fork.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ident.h"
#include "lot.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#define PIDFS_MAGIC 0x50494446 /* include/uapi/linux/magic.h */
#define CACHE_SIZE 64

int sl_process_alive(uint32_t pid, uint64_t start, uint64_t start_mask)
{
    if (pid == 0)
        return 0;
    uint32_t my_pid, my_tid;
    uint64_t my_start;
    sl_identity(&my_pid, &my_tid, &my_start);
    if (pid == my_pid)
        return (start & start_mask) == (my_start & start_mask);
    if (!sl_pid_exists(pid))
        return 0;
    char path[64], state;
    unsigned long flags = 0;
    uint64_t actual;
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    int r = sl_read_stat(path, &state, &flags, &actual);
    if (r < 0)
        return 1;
    if (r == 0 || state == 'Z' || state == 'X' || state == 'x' || (flags & SL_PF_EXITING))
        return 0;
    return (actual & start_mask) == (start & start_mask);
}

/* Will thread `tid` of process (pid, start) never run again? Its process is dead, or the thread
 * is gone, a zombie or exiting (a killed process's threads take a while to exit, during which
 * they still exist). A thread we cannot see (/proc hidden) counts as alive. Used where a dead
 * thread would otherwise absorb a wake-up meant for a live one. */
int sl_thread_gone(uint32_t pid, uint32_t tid, uint64_t start)
{
    /* start 0: not recorded, any start time matches */
    if (!sl_process_alive(pid, start, start ? ~0ULL : 0))
        return 1;
    if (tid == 0 || tid == pid)
        return 0; /* the main thread: its stat is the process's */
    char path[80], state;
    unsigned long flags = 0;
    uint64_t actual;
    snprintf(path, sizeof path, "/proc/%u/task/%u/stat", pid, tid);
    int r = sl_read_stat(path, &state, &flags, &actual);
    if (r < 0)
        return 0;
    if (r == 0) {
        /* no such thread, unless the whole process is hidden from us (hidepid) */
        snprintf(path, sizeof path, "/proc/%u/stat", pid);
        return access(path, F_OK) == 0;
    }
    return state == 'Z' || state == 'X' || state == 'x' || (flags & SL_PF_EXITING);
}

typedef struct {
    uint32_t pid;            /* 0: empty */
    uint64_t start;          /* the process's start time (ticks), as slots record it */
    int fd;
    uint64_t dev, ino;       /* what fstat said of the pidfd when it was opened */
    uint64_t used;           /* last use, for eviction */
} pidfd_entry;

static pthread_mutex_t cache_mutex = PTHREAD_MUTEX_INITIALIZER;
static pidfd_entry cache[CACHE_SIZE];
static uint64_t uses;
static int usable = -1;    /* read and written with __atomic (read outside the mutex) */ /* -1 not tried yet, 0 no (no pidfd_open or no pidfs), 1 yes */
static int test_disabled;
static uint64_t self_ino = UINT64_MAX; /* this process's pidfd inode; UINT64_MAX: not known yet */

static void after_fork_child(void)
{
    self_ino = UINT64_MAX;
    pthread_mutex_init(&cache_mutex, NULL);
    for (int i = 0; i < CACHE_SIZE; i++) {
        if (cache[i].pid)
            close(cache[i].fd);
        cache[i].pid = 0;
    }
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(NULL, NULL, after_fork_child); }

static int still_ours(const pidfd_entry *e)
{
    struct stat st;
    return fstat(e->fd, &st) == 0 && (uint64_t)st.st_dev == e->dev &&
           (uint64_t)st.st_ino == e->ino;
}

/* Does this kernel give each pidfd its own inode (pidfs)? Decided on the first pidfd. */
static int check_usable(int fd)
{
    struct statfs sf;
    if (LOAD(&usable) < 0)
        STORE(&usable, fstatfs(fd, &sf) == 0 && (uint64_t)sf.f_type == PIDFS_MAGIC);
    return LOAD(&usable);
}

/* The slot of a new entry: an empty one, else one whose process has exited, else none. */
static pidfd_entry *free_entry(void)
{
    pidfd_entry *oldest = NULL;
    for (int i = 0; i < CACHE_SIZE; i++) {
        pidfd_entry *e = &cache[i];
        if (!e->pid)
            return e;
        struct pollfd p = {e->fd, POLLIN, 0};
        if (!still_ours(e) || (poll(&p, 1, 0) == 1 && (p.revents & POLLIN))) {
            if (!oldest || e->used < oldest->used)
                oldest = e;
        }
    }
    if (oldest && still_ours(oldest))
        close(oldest->fd);
    if (oldest)
        oldest->pid = 0;
    return oldest;
}

/* Open and remember a pidfd for (pid, start), the process whose pidfd inode the slot says is
 * `ino` (0: not known). Returns the entry, NULL with *answer set when that already settles it
 * (0: the process is gone or the pid is another process's now), or NULL with *answer -1 when
 * the cache cannot help. */
static pidfd_entry *open_entry(uint32_t pid, uint64_t start, uint64_t ino, int *answer)
{
    *answer = -1;
    int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (fd < 0) {
        if (errno == ESRCH)
            *answer = 0;
        else if (errno == ENOSYS)
            STORE(&usable, 0);
        return NULL;
    }
    /* opened first, then checked: if its inode is the one the parker recorded, or failing
     * that the start time in /proc matches now, the pidfd is that process's */
    struct stat st;
    if (!check_usable(fd) || fstat(fd, &st) != 0) {
        close(fd);
        return NULL;
    }
    if (!ino || (uint64_t)st.st_ino != ino) {
        char state;
        uint64_t actual;
        int r = sl_proc_stat(pid, &state, &actual);
        if (r == 0 || (r == 1 && actual != start))
            *answer = 0;
        if (r != 1 || actual != start) {
            close(fd);
            return NULL;
        }
    }
    pidfd_entry *e = free_entry();
    if (!e) {
        close(fd);
        return NULL;
    }
    /* a descriptor number another entry still claims was closed behind its back: drop that
     * entry without closing (the number is this new pidfd's now) */
    for (int i = 0; i < CACHE_SIZE; i++)
        if (cache[i].pid && cache[i].fd == fd)
            cache[i].pid = 0;
    e->pid = pid;
    e->start = start;
    e->fd = fd;
    e->dev = (uint64_t)st.st_dev;
    e->ino = (uint64_t)st.st_ino;
    return e;
}

/* 1 alive, 0 exited, -1 cannot tell; the cache mutex held. */
static int cached_alive(uint32_t pid, uint64_t start, uint64_t ino)
{
    pidfd_entry *e = NULL;
    for (int i = 0; i < CACHE_SIZE && !e; i++)
        if (cache[i].pid == pid && cache[i].start == start)
            e = &cache[i];
    if (e && !still_ours(e)) {
        e->pid = 0; /* closed behind our back: the number is not ours to close */
        e = NULL;
    }
    if (!e) {
        int answer;
        e = open_entry(pid, start, ino, &answer);
        if (!e)
            return answer;
    }
    e->used = ++uses;
    struct pollfd p = {e->fd, POLLIN, 0};
    int n = poll(&p, 1, 0);
    if (n < 0)
        return -1;
    return n == 1 && (p.revents & POLLIN) ? 0 : 1;
}

int sl_peer_alive(uint32_t pid, uint32_t tid, uint64_t start, uint64_t pidfs_ino)
{
    pthread_once(&atfork_once, register_atfork);
    if (pid == 0)
        return 0;
    uint32_t my_pid, my_tid;
    uint64_t my_start;
    sl_identity(&my_pid, &my_tid, &my_start);
    if (pid == my_pid)
        return start == my_start || start == 0 || my_start == 0 ? 1 : -1;
    if (!LOAD(&usable) || LOAD(&test_disabled))
        return -1;
    pthread_mutex_lock(&cache_mutex);
    int alive = cached_alive(pid, start, pidfs_ino);
    pthread_mutex_unlock(&cache_mutex);
    if (alive == 0)
        return sl_thread_gone(pid, tid, start) ? 0 : -1; /* confirmed by /proc */
    if (alive == 1 && tid && tid != pid && syscall(SYS_tgkill, (pid_t)pid, (pid_t)tid, 0) != 0 &&
        errno == ESRCH)
        return 0; /* the process lives on without that thread */
    return alive;
}

/* This process's pidfd inode (0 if there is no pidfs), recorded in the slots it parks in. */
uint64_t sl_self_pidfs_ino(void)
{
    pthread_once(&atfork_once, register_atfork);
    uint64_t ino = LOAD(&self_ino);
    if (ino != UINT64_MAX)
        return ino;
    ino = 0;
    int fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (fd >= 0) {
        struct statfs sf;
        struct stat st;
        if (fstatfs(fd, &sf) == 0 && (uint64_t)sf.f_type == PIDFS_MAGIC && fstat(fd, &st) == 0)
            ino = (uint64_t)st.st_ino;
        close(fd);
    }
    STORE(&self_ino, ino);
    return ino;
}

/* test hook: 0 makes sl_peer_alive answer "cannot tell" (-1), as where pidfds are unusable */
int sl_test_liveness_cache(int enable)
{
    STORE(&test_disabled, !enable);
    return 0;
}
