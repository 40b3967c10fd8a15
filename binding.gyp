{
  "targets": [
    {
      "target_name": "bdus_native",
      "sources": ["native/bdus_native.c", "native/nbd_netlink.c", "native/ublk.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
    }
  ]
}
