"""The command-line tools: ``wgpy`` and its subcommands, ``wgpy-userspace``, wg-quick configs."""
