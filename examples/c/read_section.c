/*
 * read_section.c: print every field of a section by walking its schema, written from
 * docs/section-abi.md, docs/protocol.md and include/sharingmemory/section.h alone.
 *
 * It opens the device for reading (connect, IRP_MJ_CREATE), sends IOCTL_OPEN_SECTION with the
 * name, checks the fd that comes back (its size and its seals: a fake driver could send a
 * writable one), maps it PROT_READ, checks the header, takes one consistent copy by the latch,
 * and prints one line per field, `name<TAB>value<TAB>unit`, after a first line
 * `section NAME state STATE updates N`. Fields of types it does not know are skipped.
 *
 * Build:  cc -std=c11 -Wall -Wextra -Werror -O2 -I../../include -o read_section read_section.c
 * Usage:  read_section SECTION [SOCKET]   (SOCKET: $SHARINGMEMORY_SOCKET, else as read_time.c)
 * Exit status: 0 printed, 1 error (one line on stderr), 2 bad usage.
 */
#define _GNU_SOURCE /* MSG_CMSG_CLOEXEC (recvmsg(2)), F_GET_SEALS (fcntl(2)) */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "sharingmemory/section.h"

enum { REQUEST_HEADER_SIZE = 24, REPLY_HEADER_SIZE = 32, PROTOCOL_VERSION = 1, MAX_OUTPUT = 256 };
enum { IRP_MJ_CREATE = 0x00, IRP_MJ_CLOSE = 0x02, IRP_MJ_DEVICE_CONTROL = 0x0E, IRP_MJ_CLEANUP = 0x12 };
#define FILE_READ_DATA 0x1u
#define IOCTL_OPEN_SECTION 0x00226018u /* CTL_CODE(FILE_DEVICE_UNKNOWN, 0x806, METHOD_BUFFERED, FILE_READ_ACCESS) */
#define SECTION_REPLY_SIZE 32u       /* instance_id[16], total_size, section_id, producer_pid, producer_uid */
#define NEEDED_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | 0x0010 /* F_SEAL_FUTURE_WRITE */ | F_SEAL_SEAL)

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* One request with `input`, one reply; the reply's fd (if any) in *fd. Returns the NTSTATUS, or
 * -1 for a broken connection or reply. */
static int64_t transact(int sock, uint32_t id, uint8_t major, uint32_t code, const void *input, uint32_t input_length,
                        uint8_t *output, uint32_t *output_length, int *fd)
{
    uint8_t request[REQUEST_HEADER_SIZE + 64] = {'S', 'M', PROTOCOL_VERSION, major};
    put_u32(request + 4, id);
    put_u32(request + 8, code);
    put_u32(request + 12, major == IRP_MJ_DEVICE_CONTROL ? MAX_OUTPUT : 0);
    put_u32(request + 16, input_length);
    memcpy(request + REQUEST_HEADER_SIZE, input, input_length);
    *fd = -1;
    if (send(sock, request, REQUEST_HEADER_SIZE + input_length, MSG_NOSIGNAL) < 0)
        return -1;
    uint8_t buffer[REPLY_HEADER_SIZE + MAX_OUTPUT + 1];
    union {
        char bytes[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = buffer, .iov_len = sizeof buffer};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes,
                         .msg_controllen = sizeof control.bytes};
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
            int got;
            memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
            if (*fd < 0)
                *fd = got;
            else
                close(got); /* unix(7): unwanted fds arrive anyway */
        }
    }
    if (n < REPLY_HEADER_SIZE || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || buffer[0] != 'S' ||
        buffer[3] != major || sharingmemory_le32(buffer + 4) != id ||
        sharingmemory_le32(buffer + 24) != (uint32_t)(n - REPLY_HEADER_SIZE)) {
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        return -1;
    }
    *output_length = sharingmemory_le32(buffer + 24);
    memcpy(output, buffer + REPLY_HEADER_SIZE, *output_length);
    return sharingmemory_le32(buffer + 8);
}

static int fail(const char *what, const char *why)
{
    fprintf(stderr, "read_section: %s: %s\n", what, why);
    return 1;
}

static void print_value(const struct sharingmemory_section_field *f, const uint8_t *v)
{
    uint32_t u32 = sharingmemory_le32(v);
    uint64_t u64 = f->length == 8 ? sharingmemory_le64(v) : 0;
    float f32;
    double f64;
    switch (f->type) {
    case SHARINGMEMORY_I32: printf("%" PRId32, (int32_t)u32); break;
    case SHARINGMEMORY_U32: printf("%" PRIu32, u32); break;
    case SHARINGMEMORY_I64: printf("%" PRId64, (int64_t)u64); break;
    case SHARINGMEMORY_U64: printf("%" PRIu64, u64); break;
    case SHARINGMEMORY_F32: memcpy(&f32, &u32, 4); printf("%.9g", (double)f32); break;
    case SHARINGMEMORY_F64: memcpy(&f64, &u64, 8); printf("%.17g", f64); break;
    case SHARINGMEMORY_BOOL: printf("%s", v[0] ? "true" : "false"); break;
    case SHARINGMEMORY_STR: /* NUL-padded; a control byte from a hostile producer prints as '?' */
        for (uint32_t i = 0; i < f->length && v[i] != 0; i++)
            putchar(v[i] < 0x20 || v[i] == 0x7f ? '?' : v[i]);
        break;
    default: break;
    }
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3 || strlen(argv[1]) > 64) {
        fprintf(stderr, "usage: read_section SECTION [SOCKET]\n");
        return 2;
    }
    const char *path = argc == 3 ? argv[2] : getenv("SHARINGMEMORY_SOCKET");
    if (path == NULL)
        path = getuid() == 0 ? "/run/sharingmemory/SharingMemory" : "/tmp/sharingmemory/SharingMemory";
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof address.sun_path)
        return fail(path, "socket path too long");
    strcpy(address.sun_path, path);
    int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct timeval timeout = {.tv_sec = 5};
    if (sock < 0 || setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) < 0 ||
        connect(sock, (struct sockaddr *)&address, sizeof address) < 0)
        return fail(path, strerror(errno));

    uint8_t out[MAX_OUTPUT];
    uint32_t out_length = 0;
    int fd;
    int64_t status = transact(sock, 1, IRP_MJ_CREATE, FILE_READ_DATA, "", 0, out, &out_length, &fd);
    if (status != 0)
        return fail("IRP_MJ_CREATE", status < 0 ? "broken reply" : "refused by the driver");
    status = transact(sock, 2, IRP_MJ_DEVICE_CONTROL, IOCTL_OPEN_SECTION, argv[1], (uint32_t)strlen(argv[1]), out,
                      &out_length, &fd);
    if (status != 0 || fd < 0 || out_length != SECTION_REPLY_SIZE) {
        char why[64];
        snprintf(why, sizeof why, "the driver answered 0x%08" PRIX64, (uint64_t)status);
        return fail(argv[1], status == 0xC0000034 ? "no such section" : why);
    }
    size_t length = sharingmemory_le32(out + 16);
    struct stat st;
    if (fstat(fd, &st) < 0 || (size_t)st.st_size != length || (fcntl(fd, F_GET_SEALS) & NEEDED_SEALS) != NEEDED_SEALS)
        return fail(argv[1], "the fd is not a sealed section of the announced size");
    const void *base = mmap(NULL, length, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED)
        return fail("mmap", strerror(errno));
    if (sharingmemory_section_check(base, length) != 0)
        return fail(argv[1], "not a section of ABI 1");

    uint32_t data_size = sharingmemory_section_get(base, SHARINGMEMORY_SECTION_DATA_SIZE);
    uint8_t *copy = malloc(data_size);
    if (copy == NULL || sharingmemory_section_read(base, copy, data_size) != 0)
        return fail(argv[1], "no consistent copy (the producer never paused)");
    static const char *states[] = {"initializing", "running", "stopped"};
    uint32_t state = sharingmemory_section_state(base);
    printf("section %s state %s updates %" PRIu64 "\n", argv[1], states[state < 3 ? state : 2],
           sharingmemory_le64(copy));
    uint32_t count = sharingmemory_section_get(base, SHARINGMEMORY_SECTION_FIELD_COUNT);
    for (uint32_t i = 0; i < count; i++) {
        struct sharingmemory_section_field f;
        int err = sharingmemory_section_field(base, i, &f);
        if (err == SHARINGMEMORY_SECTION_ESKIP)
            continue;
        if (err != 0)
            return fail(argv[1], "a schema entry is out of bounds");
        printf("%.*s\t", (int)f.name_length, f.name);
        print_value(&f, copy + f.value_offset);
        printf("\t%.*s\n", (int)f.unit_length, f.unit);
    }
    free(copy);

    uint8_t bye[REQUEST_HEADER_SIZE] = {'S', 'M', PROTOCOL_VERSION, IRP_MJ_CLEANUP};
    put_u32(bye + 4, 3);
    send(sock, bye, sizeof bye, MSG_NOSIGNAL); /* CLEANUP and CLOSE; the driver also cleans up on close */
    bye[3] = IRP_MJ_CLOSE;
    put_u32(bye + 4, 4);
    send(sock, bye, sizeof bye, MSG_NOSIGNAL);
    close(sock);
    return 0;
}
