/* A second core for one request: a helper thread that runs one job at a time (helper.c). */
#ifndef TT_HELPER_H
#define TT_HELPER_H

/* Starts fn(arg) on the helper thread and returns 1; then tt_helper_wait() must follow
 * before arg or anything fn reads goes away. Returns 0, and runs nothing, when the helper
 * is busy with another caller's job, the process has a single CPU, or the thread cannot be
 * made. Called without the GIL; fn must not touch Python objects. */
int tt_helper_start(void (*fn)(void *), void *arg);

/* Waits until the job started last by this caller is done. */
void tt_helper_wait(void);

#endif
