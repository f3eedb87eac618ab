/* The calling thread's identity, as it goes into lock words.
 *
 * getpid() and gettid() are real system calls, and the start time needs a read of /proc, so all
 * three are cached: pid and start per process, tid per thread. A fork child must not keep its
 * parent's cache: the atfork child handler bumps `sl_fast_gen` and marks the process part stale;
 * each thread compares its cached generation with `sl_fast_gen` (one TLS read and one compare on
 * the fast path, my_bits in fast.h) and recomputes when they differ. A new thread starts with
 * generation 0, which never matches. All of this runs with the GIL held, so the refresh needs no
 * further locking.
 */
#include <pthread.h>

#include "fast.h"

uint32_t sl_fast_pid;
uint64_t sl_fast_start;
uint64_t sl_fast_gen = 1;
__thread sl_fast_ident sl_fast_self __attribute__((tls_model("initial-exec")));

static void atfork_child(void)
{
    sl_fast_gen++;
    sl_fast_pid = 0;
}

void sl_fast_ident_refresh(void)
{
    if (sl_fast_pid == 0) {
        sl_fast_start = sl_self_start();
        sl_fast_pid = (uint32_t)getpid();
    }
    sl_fast_self.tid = sl_gettid();
    sl_fast_self.bits = sl_owner_bits(sl_fast_pid, sl_fast_self.tid, sl_fast_start);
    sl_fast_self.gen = sl_fast_gen;
}

/* Once, at module initialisation: the fork handler, and this thread's identity. */
int sl_fast_ident_init(void)
{
    static int atfork_registered;
    if (!atfork_registered) {
        if (pthread_atfork(NULL, NULL, atfork_child) != 0) {
            PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
            return -1;
        }
        atfork_registered = 1;
    }
    my_bits();
    return 0;
}
