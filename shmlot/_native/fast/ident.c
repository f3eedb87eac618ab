/* The calling thread's owner bits, as they go into lock words.
 *
 * They come from the core's identity cache (sl_identity, the one cache of pid, tid and start
 * time, refreshed in a fork child by the core's one fork handler); this is only their memo in
 * the form a lock word takes, per thread, tagged with the core's fork generation: my_bits
 * (fast.h) costs one TLS read and one compare, and recomputes after a fork (the generation
 * moved) or in a new thread (its generation is 0, which the core's never is). */
#include "fast.h"

__thread sl_fast_ident sl_fast_self __attribute__((tls_model("initial-exec")));

void sl_fast_ident_refresh(void)
{
    uint32_t pid, tid;
    uint64_t start;
    uint32_t gen = __atomic_load_n(sl_core.generation, __ATOMIC_RELAXED);
    sl_core.identity(&pid, &tid, &start);
    sl_fast_self.bits = sl_owner_bits(pid, tid, start);
    sl_fast_self.gen = gen;
}
