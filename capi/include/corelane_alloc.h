/*
 * corelane_alloc.h: report device-memory events to corelane's alloc server.
 *
 * The C ABI of corelane's AllocTracker (libcorelane_alloc.so; see capi/README.md).
 *
 * Use: take a sequence number with cl_alloc_seq() INSIDE your allocator's lock, at the
 * moment the address is decided (for a free: before the address can be handed out again),
 * and report the event with it after the lock is released. The daemon applies each
 * client's events in sequence order, so address reuse between threads is never seen out
 * of order. Reports never block: they go into a per-thread shared-memory ring or a bounded
 * buffer written by a background thread; when that buffer is full the newest reports are
 * dropped, counted (cl_alloc_dropped) and the count is sent to the daemon.
 *
 * Every function accepts a NULL tracker and then does nothing. A tracker is safe to use
 * from many threads at once.
 */
#ifndef CORELANE_ALLOC_H
#define CORELANE_ALLOC_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* An opaque tracker. */
typedef struct cl_alloc_tracker cl_alloc_tracker;

/* Returned by the reporting functions. */
#define CL_ALLOC_OK 0
/* NULL tracker, or an argument out of range (device not in 0..255, unknown buffer type
 * or kernel kind): nothing was reported. */
#define CL_ALLOC_EINVAL (-1)

/* Buffer types (cl_alloc_alloc). */
#define CL_ALLOC_DRAM 0
#define CL_ALLOC_L1 1
#define CL_ALLOC_SYSTEM_MEMORY 2
#define CL_ALLOC_L1_SMALL 3
#define CL_ALLOC_TRACE 4

/* Kernel kinds (cl_alloc_kernel_load). */
#define CL_ALLOC_KERNEL_APPLICATION 0
#define CL_ALLOC_KERNEL_FABRIC 1
#define CL_ALLOC_KERNEL_DISPATCH 2

/* The process-wide tracker, or NULL unless the environment variable
 * TT_ALLOC_TRACKING_ENABLED is exactly "1" (then no connection is ever attempted). Its
 * socket is $CORELANE_ALLOC_SOCKET, else the daemon's default native socket
 * ($XDG_RUNTIME_DIR/corelane/alloc.sock, else /dev/shm/corelane-$USER/alloc.sock).
 * Never free it. */
const cl_alloc_tracker *cl_alloc_tracker_global(void);

/* A new tracker reporting to the native socket at socket_path (NULL: the default socket).
 * It connects lazily from a background thread: when the daemon is absent it prints one
 * warning on stderr and retries every second. NULL only if socket_path is not UTF-8. */
cl_alloc_tracker *cl_alloc_tracker_new(const char *socket_path);

/* Frees a tracker from cl_alloc_tracker_new after writing what it holds (at most about a
 * second). NULL and the global tracker are ignored. No call on t may run concurrently
 * with this one or after it. */
void cl_alloc_tracker_free(cl_alloc_tracker *t);

/* The next sequence number (one atomic increment): call it inside your allocator's lock.
 * 0 for NULL. */
uint64_t cl_alloc_seq(const cl_alloc_tracker *t);

/* An allocation of size bytes at addr on device (buffer_type: CL_ALLOC_DRAM..TRACE). */
int cl_alloc_alloc(const cl_alloc_tracker *t, uint64_t seq, int device, uint8_t buffer_type,
                   uint64_t addr, uint64_t size);

/* The free of the buffer at addr on device (the daemon uses the size it recorded). */
int cl_alloc_free(const cl_alloc_tracker *t, uint64_t seq, int device, uint64_t addr);

/* A circular buffer cb_id of size bytes on device. */
int cl_alloc_cb_alloc(const cl_alloc_tracker *t, uint64_t seq, int device, uint64_t cb_id,
                      uint64_t size);

/* The free of circular buffer cb_id on device. */
int cl_alloc_cb_free(const cl_alloc_tracker *t, uint64_t seq, int device, uint64_t cb_id);

/* Kernel kernel_id of size bytes loaded on device (kind: CL_ALLOC_KERNEL_*). */
int cl_alloc_kernel_load(const cl_alloc_tracker *t, uint64_t seq, int device, uint8_t kind,
                         uint64_t kernel_id, uint64_t size);

/* Kernel kernel_id unloaded from device. */
int cl_alloc_kernel_unload(const cl_alloc_tracker *t, uint64_t seq, int device,
                           uint64_t kernel_id);

/* Waits up to timeout_ms until everything reported so far is pushed or written.
 * 1: done; 0: timed out (e.g. no daemon); -1: NULL tracker. Call it before exit. */
int cl_alloc_flush(const cl_alloc_tracker *t, uint32_t timeout_ms);

/* Reports dropped so far because the buffer was full. 0 for NULL. */
uint64_t cl_alloc_dropped(const cl_alloc_tracker *t);

#ifdef __cplusplus
}
#endif

#endif /* CORELANE_ALLOC_H */
