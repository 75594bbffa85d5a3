"""The I/O adapters around the sans-IO core: UDP sockets, the TUN fd, the UAPI socket, clocks.

Only modules in this package (and the command-line entry points) read clocks or touch fds.
"""
