"""The sans-IO protocol core: no clocks, sockets, fds or threads; ``now`` comes in, datagrams,
packets and deadlines go out. The I/O adapters are in :mod:`wgpy.io`."""
