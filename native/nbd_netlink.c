// SPDX-License-Identifier: MIT
//
// The kernel NBD client's generic-netlink interface, spoken with plain sockets (no libnl: one
// dependency less to install). Blocking: the caller runs it off the event loop, since a
// disconnect may wait for the kernel to send NBD_CMD_DISC on a socket the event loop reads.

#define _GNU_SOURCE
#include "nbd_netlink.h"

#include <errno.h>
#include <linux/genetlink.h>
#include <linux/nbd-netlink.h>
#include <linux/netlink.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MESSAGE_SIZE 1024

struct message {
    char bytes[MESSAGE_SIZE];
};

static struct nlmsghdr *start(struct message *m, uint16_t family, uint8_t command)
{
    memset(m, 0, sizeof(*m));
    struct nlmsghdr *header = (struct nlmsghdr *)m->bytes;
    header->nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN);
    header->nlmsg_type = family;
    header->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    struct genlmsghdr *genl = NLMSG_DATA(header);
    genl->cmd = command;
    genl->version = family == GENL_ID_CTRL ? 1 : NBD_GENL_VERSION;
    return header;
}

static struct nlattr *put(struct nlmsghdr *header, uint16_t type, const void *data, uint16_t length)
{
    struct nlattr *attr = (struct nlattr *)((char *)header + NLMSG_ALIGN(header->nlmsg_len));
    attr->nla_type = type;
    attr->nla_len = NLA_HDRLEN + length;
    if (length)
        memcpy((char *)attr + NLA_HDRLEN, data, length);
    header->nlmsg_len = NLMSG_ALIGN(header->nlmsg_len) + NLA_ALIGN(attr->nla_len);
    return attr;
}

static void put_u64(struct nlmsghdr *header, uint16_t type, int64_t value)
{
    if (value < 0)
        return;
    uint64_t v = (uint64_t)value;
    put(header, type, &v, sizeof(v));
}

static void put_u32(struct nlmsghdr *header, uint16_t type, int64_t value)
{
    if (value < 0)
        return;
    uint32_t v = (uint32_t)value;
    put(header, type, &v, sizeof(v));
}

// Sends one request and reads until its acknowledgement; `on_reply` sees every other message.
static int transact(int fd, struct nlmsghdr *request, void (*on_reply)(struct nlmsghdr *, void *), void *context)
{
    static __thread uint32_t sequence;
    request->nlmsg_seq = ++sequence;
    if (send(fd, request, request->nlmsg_len, 0) < 0)
        return errno;
    char buffer[8192] __attribute__((aligned(NLMSG_ALIGNTO)));
    for (;;) {
        ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        int left = (int)n;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buffer; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_seq != request->nlmsg_seq)
                continue;
            if (h->nlmsg_type == NLMSG_ERROR) {
                struct nlmsgerr *error = NLMSG_DATA(h);
                return -error->error;
            }
            if (on_reply)
                on_reply(h, context);
        }
    }
}

// Walks the attributes of a generic-netlink reply.
#define FOR_EACH_ATTR(attr, header)                                                              \
    for (struct nlattr *attr = (struct nlattr *)((char *)NLMSG_DATA(header) + GENL_HDRLEN);      \
         (char *)attr + NLA_HDRLEN <= (char *)(header) + (header)->nlmsg_len && attr->nla_len >= NLA_HDRLEN; \
         attr = (struct nlattr *)((char *)attr + NLA_ALIGN(attr->nla_len)))

static void family_reply(struct nlmsghdr *header, void *context)
{
    FOR_EACH_ATTR(attr, header) {
        if (attr->nla_type == CTRL_ATTR_FAMILY_ID)
            memcpy(context, (char *)attr + NLA_HDRLEN, sizeof(uint16_t));
    }
}

static void connect_reply(struct nlmsghdr *header, void *context)
{
    FOR_EACH_ATTR(attr, header) {
        if (attr->nla_type == NBD_ATTR_INDEX)
            memcpy(context, (char *)attr + NLA_HDRLEN, sizeof(uint32_t));
    }
}

int nbd_netlink(const struct nbd_netlink_request *r, int *index)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
    if (fd < 0)
        return errno;
    struct sockaddr_nl address = {.nl_family = AF_NETLINK};
    int err = bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0 ? errno : 0;

    struct message m;
    uint16_t family = 0;
    if (!err) {
        struct nlmsghdr *h = start(&m, GENL_ID_CTRL, CTRL_CMD_GETFAMILY);
        put(h, CTRL_ATTR_FAMILY_NAME, NBD_GENL_FAMILY_NAME, sizeof(NBD_GENL_FAMILY_NAME));
        err = transact(fd, h, family_reply, &family);
        if (!err && family == 0)
            err = ENOENT;
    }
    if (!err) {
        struct nlmsghdr *h = start(&m, family, (uint8_t)r->command);
        put_u32(h, NBD_ATTR_INDEX, r->index);
        put_u64(h, NBD_ATTR_SIZE_BYTES, r->size_bytes);
        put_u64(h, NBD_ATTR_BLOCK_SIZE_BYTES, r->block_size);
        put_u64(h, NBD_ATTR_SERVER_FLAGS, r->server_flags);
        put_u64(h, NBD_ATTR_CLIENT_FLAGS, r->client_flags);
        put_u64(h, NBD_ATTR_TIMEOUT, r->timeout);
        put_u64(h, NBD_ATTR_DEAD_CONN_TIMEOUT, r->dead_conn_timeout);
        if (r->backend[0])
            put(h, NBD_ATTR_BACKEND_IDENTIFIER, r->backend, (uint16_t)(strlen(r->backend) + 1));
        if (r->socket >= 0) {
            struct nlattr *sockets = put(h, NBD_ATTR_SOCKETS, NULL, 0);
            struct nlattr *item = put(h, NBD_SOCK_ITEM, NULL, 0);
            put_u32(h, NBD_SOCK_FD, r->socket);
            char *end = (char *)h + h->nlmsg_len;
            item->nla_len = (uint16_t)(end - (char *)item);
            sockets->nla_len = (uint16_t)(end - (char *)sockets);
        }
        uint32_t chosen = UINT32_MAX;
        err = transact(fd, h, connect_reply, &chosen);
        if (!err && index)
            *index = chosen == UINT32_MAX ? -1 : (int)chosen;
    }
    close(fd);
    return err;
}
