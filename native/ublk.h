// SPDX-License-Identifier: MIT
#ifndef BDUS_UBLK_H
#define BDUS_UBLK_H
#include <node_api.h>
#include <stdint.h>

// One ublk control command (linux/ublk_cmd.h, UBLK_CMD_*), sent on /dev/ublk-control.
struct ublk_control_request {
    uint32_t command;  // UBLK_CMD_* number (the ioctl encoding is made here)
    uint32_t device;   // dev_id; -1: the kernel chooses (ADD_DEV)
    uint16_t queue;    // queue_id; -1 when the command has none
    uint64_t data;     // data[0]: the server's pid for START_DEV and END_USER_RECOVERY
    void *buffer;      // the command's payload (dev_info, params, features), or NULL
    uint32_t length;
};

// Sends the command and waits for the kernel's answer: >= 0, or a negative errno.
int ublk_control(const struct ublk_control_request *request);

// Adds ublkControl, ublkQueue, ublkCommit, ublkCopy and ublkQueueClose to the addon's exports.
void ublk_register(napi_env env, napi_value exports);

#endif
