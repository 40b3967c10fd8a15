{
  "targets": [
    {
      "target_name": "bdus_native",
      "sources": ["native/bdus_native.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
    }
  ]
}
