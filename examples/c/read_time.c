/*
 * read_time.c: the seed's "Kernel Timer" program in C, written from docs/protocol.md and
 * include/sharingmemory/page.h alone (no Python involved on this side).
 *
 * It opens the device (connects to the driver's socket and sends IRP_MJ_CREATE), asks for the
 * shared page (IOCTL_GIVE_ME_YOUR_MEMORY), maps the fd that comes back read-only, and prints
 * the local time as HH:MM:SS at every tick, read straight out of the page. It sleeps until the
 * driver's next deadline (monotonic_ns + interval_ns of the last snapshot, on the same
 * CLOCK_MONOTONIC) instead of polling at 1 Hz beside a 1 Hz writer, which would skip or repeat
 * a second now and then. On exit it sends IRP_MJ_CLEANUP and IRP_MJ_CLOSE.
 *
 * Build (or `make` in this directory):
 *     cc -std=c11 -Wall -Wextra -Werror -O2 -I../../include -o read_time read_time.c
 *
 * Usage: read_time [-n COUNT] [SOCKET]
 *     SOCKET defaults as in sharingmemory's _paths.py: $SHARINGMEMORY_SOCKET; for root
 *     /run/sharingmemory/SharingMemory; $XDG_RUNTIME_DIR/sharingmemory/SharingMemory; else
 *     /tmp/sharingmemory-$UID/SharingMemory. -n COUNT exits after COUNT ticks.
 *
 * Exit status: 0 done, 1 error, 2 bad usage, 3 the driver stopped or went away,
 * 128+N stopped by signal N (SIGINT, SIGTERM) after a clean close.
 */
#define _GNU_SOURCE /* MSG_CMSG_CLOEXEC (recvmsg(2)) and ppoll(2) are Linux extensions */

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "sharingmemory/page.h"

/* --- the wire protocol (docs/protocol.md), version 1 ---------------------------------------- */

enum {
    REQUEST_HEADER_SIZE = 24,
    REPLY_HEADER_SIZE = 32,
    PROTOCOL_VERSION = 1,
    REPLY_FLAG_FD = 1u << 0,
    MAX_OUTPUT = 256, /* the largest output we ask for is 80 bytes (the status struct) */
};

enum major_function {
    IRP_MJ_CREATE = 0x00,
    IRP_MJ_CLOSE = 0x02,
    IRP_MJ_DEVICE_CONTROL = 0x0E,
    IRP_MJ_CLEANUP = 0x12,
};

#define FILE_READ_DATA 0x1u
#define IOCTL_GIVE_ME_YOUR_MEMORY 0x00226000u /* CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS) */
#define IOCTL_QUERY_STATUS 0x00226004u        /* CTL_CODE(FILE_DEVICE_UNKNOWN, 0x801, ...) */
#define QUERY_STATUS_SIZE 80u

#define STATUS_SUCCESS 0x00000000u

/* Bound on every request, as the Python client's default timeout: a hung driver is an error. */
#define REQUEST_TIMEOUT_SECONDS 5

enum exit_status { EXIT_OK = 0, EXIT_ERROR = 1, EXIT_USAGE = 2, EXIT_DRIVER_STOPPED = 3 };

static const char *program = "read_time";

/* Set by the SIGINT/SIGTERM handler; the signals are delivered only inside ppoll (see main). */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int signum)
{
    stop_signal = signum;
}

/* Every error is one line on stderr, prefixed with the program's name. */
static void error_line(const char *format, ...)
{
    va_list args;
    fprintf(stderr, "%s: ", program);
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
}

static const char *status_name(uint32_t status)
{
    switch (status) {
    case 0x00000000u: return "STATUS_SUCCESS";
    case 0x80000005u: return "STATUS_BUFFER_OVERFLOW";
    case 0xC0000001u: return "STATUS_UNSUCCESSFUL";
    case 0xC0000008u: return "STATUS_INVALID_HANDLE";
    case 0xC000000Du: return "STATUS_INVALID_PARAMETER";
    case 0xC0000010u: return "STATUS_INVALID_DEVICE_REQUEST";
    case 0xC0000022u: return "STATUS_ACCESS_DENIED";
    case 0xC0000023u: return "STATUS_BUFFER_TOO_SMALL";
    case 0xC0000059u: return "STATUS_REVISION_MISMATCH";
    case 0xC000009Au: return "STATUS_INSUFFICIENT_RESOURCES";
    case 0xC000011Fu: return "STATUS_TOO_MANY_OPENED_FILES";
    case 0xC0000184u: return "STATUS_INVALID_DEVICE_STATE";
    default: return "an unknown NTSTATUS";
    }
}

/* All integers on the wire are little-endian, whatever this machine is. */
static void put_u32(uint8_t *p, uint32_t value)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(value >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

/* --- the handle: one connection ------------------------------------------------------------ */

struct device {
    int sock;
    uint32_t next_request_id;
    int opened; /* CREATE succeeded: CLEANUP and CLOSE are owed */
    int gone;   /* the driver closed the connection: nothing more can be sent */
};

struct reply {
    uint32_t status;
    uint64_t information;
    uint32_t output_length;
    uint8_t output[MAX_OUTPUT];
    int fd; /* the page, for IOCTL_GIVE_ME_YOUR_MEMORY; else -1 */
};

/* What transact() returns besides 0: the driver went away, or anything else went wrong. */
enum { TRANSACT_GONE = -2, TRANSACT_ERROR = -1 };

static int is_gone_errno(int err)
{
    return err == EPIPE || err == ECONNRESET || err == ENOTCONN;
}

/*
 * Close every fd of an SCM_RIGHTS message except the one we keep (unix(7): fds that arrive are
 * installed in our fd table whether we want them or not).
 */
static int take_fds(struct msghdr *msg)
{
    int kept = -1;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(msg); cmsg != NULL; cmsg = CMSG_NXTHDR(msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd); /* CMSG_DATA may be unaligned */
            if (kept < 0)
                kept = fd;
            else
                close(fd);
        }
    }
    return kept;
}

/*
 * One request, one reply (the protocol is strictly request/reply). No input bytes: none of our
 * requests has any. Returns 0 with *reply filled (its status may still be an error), or
 * TRANSACT_GONE / TRANSACT_ERROR after printing why. `what` names the request in messages.
 */
static int transact(struct device *dev, uint8_t major, uint32_t code, uint32_t output_length,
                    struct reply *reply, const char *what)
{
    uint8_t request[REQUEST_HEADER_SIZE] = {'S', 'M', PROTOCOL_VERSION, major};
    uint32_t request_id = dev->next_request_id++;
    put_u32(request + 4, request_id);
    put_u32(request + 8, code);
    put_u32(request + 12, output_length);
    put_u32(request + 16, 0); /* input_length */
    put_u32(request + 20, 0); /* reserved */

    reply->fd = -1;
    if (dev->gone)
        return TRANSACT_GONE;

    /* MSG_NOSIGNAL: a driver that died gives EPIPE here, not a SIGPIPE that kills us (send(2)). */
    ssize_t sent = send(dev->sock, request, sizeof request, MSG_NOSIGNAL);
    if (sent < 0) {
        if (is_gone_errno(errno)) {
            dev->gone = 1;
            return TRANSACT_GONE;
        }
        error_line("%s: send: %s", what, strerror(errno));
        return TRANSACT_ERROR;
    }

    /* One byte more than we can use, so an oversized reply shows up as MSG_TRUNC. */
    uint8_t buffer[REPLY_HEADER_SIZE + MAX_OUTPUT + 1];
    union { /* cmsg(3): the control buffer must be aligned for struct cmsghdr */
        char bytes[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = buffer, .iov_len = sizeof buffer};
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes, .msg_controllen = sizeof control.bytes};

    /* MSG_CMSG_CLOEXEC: the page fd is close-on-exec from the moment it exists (recvmsg(2)). */
    ssize_t n = recvmsg(dev->sock, &msg, MSG_CMSG_CLOEXEC);
    if (n <= 0) {
        if (n == 0 || is_gone_errno(errno)) { /* SOCK_SEQPACKET: 0 bytes is the peer's close */
            dev->gone = 1;
            return TRANSACT_GONE;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            error_line("%s: no reply within %d s: the driver does not answer", what, REQUEST_TIMEOUT_SECONDS);
        else
            error_line("%s: recvmsg: %s", what, strerror(errno));
        return TRANSACT_ERROR;
    }
    int fd = take_fds(&msg);

    const char *problem = NULL;
    if (msg.msg_flags & MSG_CTRUNC) /* fds were lost: the kernel closed those that did not fit */
        problem = "control data truncated (MSG_CTRUNC)";
    else if (msg.msg_flags & MSG_TRUNC)
        problem = "reply longer than any reply we asked for";
    else if ((size_t)n < REPLY_HEADER_SIZE)
        problem = "reply shorter than its header";
    else if (buffer[0] != 'S' || buffer[1] != 'M' || buffer[2] != PROTOCOL_VERSION)
        problem = "reply has a wrong magic or version";
    else if (buffer[3] != major || get_u32(buffer + 4) != request_id)
        problem = "reply does not answer our request";
    else if (get_u32(buffer + 24) != (size_t)n - REPLY_HEADER_SIZE || get_u32(buffer + 24) > output_length)
        problem = "reply's output_length does not match";
    else if (((get_u32(buffer + 12) & REPLY_FLAG_FD) != 0) != (fd >= 0))
        problem = "reply's fd flag does not match the fds attached";
    if (problem != NULL) {
        error_line("%s: protocol error: %s", what, problem);
        if (fd >= 0)
            close(fd);
        return TRANSACT_ERROR;
    }

    reply->status = get_u32(buffer + 8);
    reply->information = get_u64(buffer + 16);
    reply->output_length = get_u32(buffer + 24);
    memcpy(reply->output, buffer + REPLY_HEADER_SIZE, reply->output_length);
    reply->fd = fd;
    return 0;
}

/* The default socket path, by the rules of src/sharingmemory/_paths.py. */
static int default_socket_path(char *path, size_t size)
{
    const char *override = getenv("SHARINGMEMORY_SOCKET");
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    uid_t uid = getuid();
    int n;

    if (override != NULL && override[0] != '\0')
        n = snprintf(path, size, "%s", override);
    else if (uid == 0)
        n = snprintf(path, size, "/run/sharingmemory/SharingMemory");
    else if (runtime != NULL && runtime[0] == '/') /* only an absolute XDG_RUNTIME_DIR counts */
        n = snprintf(path, size, "%s/sharingmemory/SharingMemory", runtime);
    else
        n = snprintf(path, size, "/tmp/sharingmemory-%lu/SharingMemory", (unsigned long)uid);
    return n >= 0 && (size_t)n < size ? 0 : -1;
}

/* CreateFile: connect and send IRP_MJ_CREATE for read access. Returns 0, or -1 after a message. */
static int device_open(struct device *dev, const char *path)
{
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    struct timeval timeout = {.tv_sec = REQUEST_TIMEOUT_SECONDS};
    struct reply reply;

    dev->sock = -1;
    dev->next_request_id = 1;
    dev->opened = 0;
    dev->gone = 0;
    if (strlen(path) >= sizeof address.sun_path) { /* unix(7): sun_path is 108 bytes */
        error_line("socket path too long for a Unix socket (%zu bytes at most): %s", sizeof address.sun_path - 1, path);
        return -1;
    }
    strcpy(address.sun_path, path);

    /* SOCK_SEQPACKET keeps message boundaries: one send is one request (docs/protocol.md). */
    dev->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (dev->sock < 0) {
        error_line("socket: %s", strerror(errno));
        return -1;
    }
    /* socket(7): SO_RCVTIMEO/SO_SNDTIMEO bound each request, so a hung driver is an error. */
    if (setsockopt(dev->sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) < 0 ||
        setsockopt(dev->sock, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) < 0) {
        error_line("setsockopt: %s", strerror(errno));
        return -1;
    }
    if (connect(dev->sock, (struct sockaddr *)&address, sizeof address) < 0) {
        if (errno == ENOENT || errno == ECONNREFUSED)
            error_line("no driver at %s (%s); is `sharingmemory serve` running?", path, strerror(errno));
        else
            error_line("cannot connect to %s: %s", path, strerror(errno));
        return -1;
    }

    int rc = transact(dev, IRP_MJ_CREATE, FILE_READ_DATA, 0, &reply, "IRP_MJ_CREATE");
    if (rc == TRANSACT_GONE)
        error_line("IRP_MJ_CREATE: the driver closed the connection");
    if (rc != 0)
        return -1;
    if (reply.status != STATUS_SUCCESS) {
        error_line("the driver refused to open the device: %s (0x%08lX)", status_name(reply.status),
                   (unsigned long)reply.status);
        return -1;
    }
    dev->opened = 1;
    return 0;
}

/* CloseHandle: IRP_MJ_CLEANUP then IRP_MJ_CLOSE for an opened handle, unless the driver is gone
 * (it cleaned up by itself when the connection dropped). */
static void device_close(struct device *dev)
{
    struct reply reply;
    if (dev->sock < 0)
        return;
    if (dev->opened && transact(dev, IRP_MJ_CLEANUP, 0, 0, &reply, "IRP_MJ_CLEANUP") == 0)
        transact(dev, IRP_MJ_CLOSE, 0, 0, &reply, "IRP_MJ_CLOSE");
    close(dev->sock);
    dev->sock = -1;
}

/*
 * IOCTL_GIVE_ME_YOUR_MEMORY with the seed's pointer-sized output buffer; map the page fd that
 * comes back, PROT_READ and MAP_SHARED, then close the fd (the mapping keeps the file alive,
 * mmap(2)). Returns the checked page, or NULL after a message.
 */
static const struct sharingmemory_page *map_shared_memory(struct device *dev, size_t *length)
{
    struct reply reply;
    int rc = transact(dev, IRP_MJ_DEVICE_CONTROL, IOCTL_GIVE_ME_YOUR_MEMORY, 8, &reply, "IOCTL_GIVE_ME_YOUR_MEMORY");
    if (rc == TRANSACT_GONE)
        error_line("IOCTL_GIVE_ME_YOUR_MEMORY: the driver closed the connection");
    if (rc != 0)
        return NULL;
    if (reply.status != STATUS_SUCCESS || reply.information != 8 || reply.output_length != 8 || reply.fd < 0) {
        if (reply.status != STATUS_SUCCESS)
            error_line("IOCTL_GIVE_ME_YOUR_MEMORY failed: %s (0x%08lX)", status_name(reply.status),
                       (unsigned long)reply.status);
        else
            error_line("IOCTL_GIVE_ME_YOUR_MEMORY: the reply has no page (information %llu, %s)",
                       (unsigned long long)reply.information, reply.fd < 0 ? "no fd" : "an fd");
        if (reply.fd >= 0)
            close(reply.fd);
        return NULL;
    }

    /* The output is the length to map; the page is one page, and we refuse anything absurd. */
    uint64_t wire_length = get_u64(reply.output);
    if (wire_length < SHARINGMEMORY_PAGE_SIZE || wire_length > (1u << 20)) {
        error_line("IOCTL_GIVE_ME_YOUR_MEMORY: the driver says the page is %llu bytes", (unsigned long long)wire_length);
        close(reply.fd);
        return NULL;
    }
    *length = (size_t)wire_length;
    void *address = mmap(NULL, *length, PROT_READ, MAP_SHARED, reply.fd, 0);
    int mmap_errno = errno;
    close(reply.fd);
    if (address == MAP_FAILED) {
        error_line("mmap of the shared page: %s", strerror(mmap_errno));
        return NULL;
    }
    const struct sharingmemory_page *page = address;
    int err = sharingmemory_page_check(page, *length);
    if (err != 0) {
        error_line("the shared page: %s", sharingmemory_strerror(err));
        munmap(address, *length);
        return NULL;
    }
    return page;
}

/* --- reading the page ---------------------------------------------------------------------- */

static int64_t monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now); /* cannot fail for CLOCK_MONOTONIC with a valid pointer */
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
    struct timespec delay = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    nanosleep(&delay, NULL);
}

/*
 * A snapshot, retrying a torn read for about a second: sharingmemory_page_read gives up after a
 * bounded number of tries, which a descheduled (but live) writer can exhaust; one that stays
 * inside an update for a whole second has died there.
 */
static int read_page(const struct sharingmemory_page *page, struct sharingmemory_snapshot *snap)
{
    int err = SHARINGMEMORY_OK;
    for (int attempt = 0; attempt < 1000; attempt++) {
        err = sharingmemory_page_read(page, snap);
        if (err != SHARINGMEMORY_ERR_TORN)
            break;
        sleep_ns(1000000);
    }
    if (err != 0)
        error_line("the shared page: %s", sharingmemory_strerror(err));
    return err;
}

enum wait_result { WAIT_TICK, WAIT_SIGNAL, WAIT_GONE, WAIT_ERROR };

/*
 * Sleep until the tick after `*snap` is in the page, and put it (or a stopped snapshot) in
 * `*snap`. The driver's next deadline is monotonic_ns + interval_ns of the last update, on the
 * same system-wide CLOCK_MONOTONIC, so we sleep to just past it and read once or twice a tick.
 *
 * The sleep is a ppoll(2) on the socket, for two reasons: the driver never sends anything
 * unasked, so the socket becomes readable only when the driver closes it (it died, or it is
 * unloading); and ppoll unblocks SIGINT/SIGTERM atomically for the wait, so a signal can never
 * slip in between a check of stop_signal and the sleep.
 */
static enum wait_result wait_next_tick(struct device *dev, const struct sharingmemory_page *page,
                                       struct sharingmemory_snapshot *snap, const sigset_t *wait_mask)
{
    const struct sharingmemory_snapshot last = *snap;
    const int64_t interval = (int64_t)last.interval_ns;
    int64_t retry = interval / 10 < 1000000 ? interval / 10 : 1000000; /* min(1 ms, interval / 10) ... */
    if (retry < 10000)
        retry = 10000; /* ... but never a busy loop, whatever interval_ns says */
    int64_t target = (int64_t)last.monotonic_ns + interval + 200000;         /* 0.2 ms past the deadline */
    int64_t give_up = monotonic_ns() + 3 * interval + 1000000000;

    for (;;) {
        int64_t delay = target - monotonic_ns();
        struct timespec timeout = {.tv_sec = delay > 0 ? delay / 1000000000 : 0,
                                   .tv_nsec = delay > 0 ? delay % 1000000000 : 0};
        struct pollfd pfd = {.fd = dev->sock, .events = POLLIN};
        int ready = ppoll(&pfd, 1, &timeout, wait_mask);
        if (ready < 0 && errno != EINTR) {
            error_line("ppoll: %s", strerror(errno));
            return WAIT_ERROR;
        }
        if (stop_signal)
            return WAIT_SIGNAL;
        if (read_page(page, snap) != 0)
            return WAIT_ERROR;
        if (snap->tick_count != last.tick_count || snap->state == SHARINGMEMORY_STATE_STOPPED ||
            memcmp(snap->instance_id, last.instance_id, sizeof last.instance_id) != 0)
            return WAIT_TICK;
        if (ready > 0) { /* readable or hung up, unasked: the driver closed the connection */
            dev->gone = 1;
            return WAIT_GONE;
        }
        int64_t now = monotonic_ns();
        if (now > give_up) { /* silent for three intervals and a second: is the driver alive? */
            struct reply reply;
            int rc = transact(dev, IRP_MJ_DEVICE_CONTROL, IOCTL_QUERY_STATUS, QUERY_STATUS_SIZE, &reply,
                              "IOCTL_QUERY_STATUS");
            if (rc == TRANSACT_GONE)
                return WAIT_GONE;
            if (rc != 0)
                return WAIT_ERROR;
            give_up = now + 3 * interval + 1000000000;
        }
        target = now + retry;
    }
}

/* The HH:MM:SS of a local-time FILETIME: days are 86400 s in FILETIME, and 1601-01-01 began at 0:00. */
static void print_time(int64_t local_filetime)
{
    int64_t seconds = sharingmemory_filetime_to_unix_seconds(local_filetime);
    int64_t of_day = ((seconds % 86400) + 86400) % 86400;
    printf("%02d:%02d:%02d\n", (int)(of_day / 3600), (int)(of_day / 60 % 60), (int)(of_day % 60));
}

/* --- main ------------------------------------------------------------------------------------ */

static int usage(void)
{
    fprintf(stderr, "usage: %s [-n COUNT] [SOCKET]\n", program);
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    unsigned long count = 0; /* 0: until a signal or the driver stops */
    char path[PATH_MAX];
    int opt;

    while ((opt = getopt(argc, argv, "n:")) != -1) {
        char *end;
        switch (opt) {
        case 'n':
            errno = 0;
            count = strtoul(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' || count == 0 || optarg[0] == '-') {
                error_line("-n wants a positive number of ticks, not '%s'", optarg);
                return EXIT_USAGE;
            }
            break;
        default:
            return usage();
        }
    }
    if (argc - optind > 1)
        return usage();
    if (argc - optind == 1) {
        if (snprintf(path, sizeof path, "%s", argv[optind]) >= (int)sizeof path) {
            error_line("socket path too long");
            return EXIT_USAGE;
        }
    } else if (default_socket_path(path, sizeof path) != 0) {
        error_line("the default socket path is too long");
        return EXIT_ERROR;
    }

    /*
     * SIGINT and SIGTERM stay blocked except inside ppoll (sigprocmask(2), ppoll(2)), so they
     * end the program only between ticks, where it can still send CLEANUP and CLOSE. Every
     * other blocking call is bounded by REQUEST_TIMEOUT_SECONDS.
     */
    sigset_t stop_signals, wait_mask;
    struct sigaction action = {.sa_handler = on_stop_signal};
    sigemptyset(&action.sa_mask);
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &stop_signals, &wait_mask) < 0 || sigaction(SIGINT, &action, NULL) < 0 ||
        sigaction(SIGTERM, &action, NULL) < 0) {
        error_line("signal setup: %s", strerror(errno));
        return EXIT_ERROR;
    }
    sigdelset(&wait_mask, SIGINT);
    sigdelset(&wait_mask, SIGTERM);

    struct device dev;
    if (device_open(&dev, path) != 0) {
        device_close(&dev);
        return EXIT_ERROR;
    }
    size_t length = 0;
    const struct sharingmemory_page *page = map_shared_memory(&dev, &length);
    if (page == NULL) {
        device_close(&dev);
        return EXIT_ERROR;
    }

    int status = EXIT_OK;
    unsigned long shown = 0;
    struct sharingmemory_snapshot snap;
    if (read_page(page, &snap) != 0)
        status = EXIT_ERROR;
    while (status == EXIT_OK) {
        if (snap.state == SHARINGMEMORY_STATE_STOPPED) {
            error_line("the driver stopped (page state 2)");
            status = EXIT_DRIVER_STOPPED;
            break;
        }
        if (snap.tick_count != 0) { /* 0: the driver has not written a time yet */
            print_time(snap.local_time);
            if (fflush(stdout) != 0) { /* a line per tick, even into a pipe */
                error_line("stdout: %s", strerror(errno));
                status = EXIT_ERROR;
                break;
            }
            if (count != 0 && ++shown >= count)
                break;
        }
        switch (wait_next_tick(&dev, page, &snap, &wait_mask)) {
        case WAIT_TICK:
            break;
        case WAIT_SIGNAL:
            status = 128 + stop_signal;
            break;
        case WAIT_GONE:
            error_line("the driver closed the connection (it died or was stopped)");
            status = EXIT_DRIVER_STOPPED;
            break;
        case WAIT_ERROR:
            status = EXIT_ERROR;
            break;
        }
    }

    munmap((void *)page, length); /* munmap(2) takes a non-const pointer; we never wrote */
    device_close(&dev);
    return status;
}
