/* A second core for one request (see helper.h): one thread, made at the first job and kept,
 * and one job slot. A caller that finds the slot taken (several Python threads serving at
 * once) does its work alone: the helper never queues, so no request ever waits for
 * another's. After a fork the child has no helper: its first job makes a new one. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stddef.h>

#include "helper.h"

static pthread_mutex_t owner = PTHREAD_MUTEX_INITIALIZER; /* held by the caller of a job */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;    /* guards the slot */
static pthread_cond_t posted = PTHREAD_COND_INITIALIZER;
static pthread_cond_t finished = PTHREAD_COND_INITIALIZER;
static void (*job_fn)(void *);
static void *job_arg;
static int job_done;
static int started;  /* the helper thread runs (in this process) */
static int usable = -1; /* -1: not yet known; 0: a single CPU, or the thread could not be made */

static void *helper_main(void *unused)
{
    (void)unused;
    pthread_setname_np(pthread_self(), "tartapefs-part"); /* as ps -L and top -H show it */
    pthread_mutex_lock(&mu);
    for (;;) {
        while (job_fn == NULL)
            pthread_cond_wait(&posted, &mu);
        void (*fn)(void *) = job_fn;
        void *arg = job_arg;
        pthread_mutex_unlock(&mu);
        fn(arg);
        pthread_mutex_lock(&mu);
        job_fn = NULL;
        job_done = 1;
        pthread_cond_signal(&finished);
    }
    return NULL;
}

static void after_fork_in_child(void)
{
    /* Only the forking thread lives on: no helper, and no lock is held by anyone. */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t fresh_cond = PTHREAD_COND_INITIALIZER;
    owner = fresh;
    mu = fresh;
    posted = fresh_cond;
    finished = fresh_cond;
    job_fn = NULL;
    started = 0;
}

static int start_thread(void)
{
    if (usable < 0) {
        cpu_set_t cpus;
        usable = sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) > 1;
        if (usable && pthread_atfork(NULL, NULL, after_fork_in_child) != 0)
            usable = 0;
    }
    if (!usable)
        return 0;
    pthread_attr_t attr;
    pthread_t thread;
    if (pthread_attr_init(&attr) != 0)
        return 0;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int ok = pthread_create(&thread, &attr, helper_main, NULL) == 0;
    pthread_attr_destroy(&attr);
    if (!ok)
        usable = 0;
    return ok;
}

int tt_helper_start(void (*fn)(void *), void *arg)
{
    if (pthread_mutex_trylock(&owner) != 0)
        return 0;
    if (!started && (usable == 0 || !(started = start_thread()))) {
        pthread_mutex_unlock(&owner);
        return 0;
    }
    pthread_mutex_lock(&mu);
    job_fn = fn;
    job_arg = arg;
    job_done = 0;
    pthread_cond_signal(&posted);
    pthread_mutex_unlock(&mu);
    return 1;
}

void tt_helper_wait(void)
{
    pthread_mutex_lock(&mu);
    while (!job_done)
        pthread_cond_wait(&finished, &mu);
    pthread_mutex_unlock(&mu);
    pthread_mutex_unlock(&owner);
}
