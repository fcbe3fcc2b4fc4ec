/*
 * A toy device allocator with two threads reporting to corelane's alloc server.
 *
 * The allocator's mutex decides addresses, and freed addresses are reused at once: the
 * setting of the seed-001 race. The sequence number is taken inside the lock, so the
 * daemon's ledger is exact whatever order the reports arrive in.
 *
 * Build and run (see capi/README.md):
 *   cargo build -p corelane-alloc-c
 *   cc -Icapi/include capi/examples/example.c -Ltarget/debug -lcorelane_alloc -lpthread \
 *      -Wl,-rpath,$PWD/target/debug -o example
 *   CORELANE_ALLOC_SOCKET=$XDG_RUNTIME_DIR/corelane/alloc.sock ./example
 *
 * With EXAMPLE_PAUSE set it prints "flushed" after the flush and waits for a line on stdin
 * before exiting (the test looks at the ledger in between).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "corelane_alloc.h"

#define THREADS 2
#define PAIRS 2000
#define KEEP 2
#define SIZE 4096

static const cl_alloc_tracker *tracker;

/* The toy allocator: a bump pointer and a stack of freed addresses. */
static pthread_mutex_t heap_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t heap_next = 0x100000;
static uint64_t heap_free[THREADS * (KEEP + 1) + 16];
static int heap_nfree = 0;

static uint64_t toy_alloc(int device) {
    pthread_mutex_lock(&heap_lock);
    uint64_t addr = heap_nfree > 0 ? heap_free[--heap_nfree] : (heap_next += SIZE);
    uint64_t seq = cl_alloc_seq(tracker); /* inside the lock: where the address is decided */
    pthread_mutex_unlock(&heap_lock);
    cl_alloc_alloc(tracker, seq, device, CL_ALLOC_DRAM, addr, SIZE);
    return addr;
}

static void toy_free(int device, uint64_t addr) {
    pthread_mutex_lock(&heap_lock);
    uint64_t seq = cl_alloc_seq(tracker); /* before the address can be handed out again */
    heap_free[heap_nfree++] = addr;
    pthread_mutex_unlock(&heap_lock);
    cl_alloc_free(tracker, seq, device, addr);
}

static void *worker(void *arg) {
    (void)arg;
    uint64_t live[KEEP + 1];
    int n = 0;
    for (int i = 0; i < PAIRS + KEEP; i++) {
        live[n++] = toy_alloc(0);
        if (i < PAIRS) {
            toy_free(0, live[0]);
            for (int k = 1; k < n; k++) live[k - 1] = live[k];
            n--;
        }
    }
    return NULL; /* KEEP buffers stay allocated: the process's exit releases them */
}

int main(void) {
    cl_alloc_tracker *own = NULL;
    tracker = cl_alloc_tracker_global();
    if (tracker == NULL) {
        own = cl_alloc_tracker_new(getenv("CORELANE_ALLOC_SOCKET")); /* NULL: default */
        tracker = own;
    }
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, NULL);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);

    /* A kernel and a CB, loaded and unloaded. */
    uint64_t seq = cl_alloc_seq(tracker);
    cl_alloc_kernel_load(tracker, seq, 0, CL_ALLOC_KERNEL_APPLICATION, 0x77, 2048);
    seq = cl_alloc_seq(tracker);
    cl_alloc_cb_alloc(tracker, seq, 0, 0x55, 1024);
    seq = cl_alloc_seq(tracker);
    cl_alloc_cb_free(tracker, seq, 0, 0x55);
    seq = cl_alloc_seq(tracker);
    cl_alloc_kernel_unload(tracker, seq, 0, 0x77);

    if (cl_alloc_flush(tracker, 10000) != 1) {
        fprintf(stderr, "example: flush timed out\n");
        return 1;
    }
    if (cl_alloc_dropped(tracker) != 0) {
        fprintf(stderr, "example: %llu reports dropped\n",
                (unsigned long long)cl_alloc_dropped(tracker));
        return 1;
    }
    if (getenv("EXAMPLE_PAUSE") != NULL) {
        printf("flushed\n");
        fflush(stdout);
        char line[16];
        if (fgets(line, sizeof line, stdin) == NULL) { /* the test closed stdin: go on */ }
    }
    cl_alloc_tracker_free(own);
    return 0;
}
