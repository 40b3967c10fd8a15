{
  "targets": [
    {
      "target_name": "bdus_native",
      "sources": ["native/bdus_native.c", "native/nbd_netlink.c", "native/ring.c", "native/ublk.c", "native/fuse_uring.c", "native/watch.c", "native/write_batch.c", "native/file_io.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
    }
  ]
}
