// SPDX-License-Identifier: MIT
#ifndef BDUS_NBD_NETLINK_H
#define BDUS_NBD_NETLINK_H
#include <stdint.h>

// One NBD generic-netlink command (linux/nbd-netlink.h). A field of -1 is left out.
struct nbd_netlink_request {
    int command;                // NBD_CMD_CONNECT, _DISCONNECT or _RECONFIGURE
    int64_t index;              // the device: /dev/nbd<index>
    int64_t socket;             // a connected stream socket the kernel takes (connect, reconfigure)
    int64_t size_bytes;
    int64_t block_size;
    int64_t server_flags;       // NBD_FLAG_*
    int64_t client_flags;       // NBD_CFLAG_*
    int64_t timeout;            // seconds
    int64_t dead_conn_timeout;  // seconds
    char backend[64];           // NBD_ATTR_BACKEND_IDENTIFIER: who serves the device ("" leaves it out)
};

// Sends the command and waits for the kernel's answer. Returns 0 or a positive errno; on a
// connect, *index is the device the kernel chose.
int nbd_netlink(const struct nbd_netlink_request *request, int *index);

#endif
